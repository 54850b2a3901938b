"""Contiguous copies CUDA kernels make of strided inputs, which fake kernels never make.

``layer_norm_cuda`` and ``layer_norm_backward_cuda`` (``aten/src/ATen/native/cuda/
layer_norm_kernel.cu``) start with ``input.expect_contiguous()``: a strided input is copied
before the outputs are allocated and the copy is freed on return; the backward's
``LayerNormBackwardKernelImpl`` also takes ``dY.contiguous()``, after its outputs. A strided
input is what a residual sum of a transposed attention output gives (``nn.MultiheadAttention``
with ``batch_first=True`` returns a transposed view, and ``x + input`` keeps that layout):
measured on the H200 (bench/results/snapshots/inf-tv-vit-b16-bf16-mixed_steps_snapshot_h200
.pickle.gz), each ViT-B/16 block's second layer norm and the next block's first copied their
77 MB float32 input first.
"""

from __future__ import annotations

from typing import Any

import torch

from memfit.trace.recorder import MemoryRecorder, WorkspaceRule

__all__ = ["input_copy_rules"]

aten = torch.ops.aten


def _copy_bytes(tensor: Any) -> int:
    """What ``tensor.contiguous()`` allocates: nothing when it is contiguous already."""
    if not isinstance(tensor, torch.Tensor) or tensor.is_contiguous():
        return 0
    return tensor.numel() * tensor.element_size()


def _layer_norm(recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    # native_layer_norm(input, normalized_shape, weight, bias, eps)
    copy = [_copy_bytes(args[0])]
    recorder.hidden([], "native_layer_norm (contiguous input)", before_outputs=copy)


def _layer_norm_backward(
    recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any
) -> None:
    # native_layer_norm_backward(grad_out, input, normalized_shape, mean, rstd, weight, bias, mask)
    recorder.hidden(
        [_copy_bytes(args[0])],
        "native_layer_norm_backward (contiguous copies)",
        before_outputs=[_copy_bytes(args[1])],
    )


def input_copy_rules() -> dict[Any, WorkspaceRule]:
    """Rules for ``MemoryRecorder`` that record these copies (module docstring)."""
    return {
        aten.native_layer_norm: _layer_norm,
        aten.native_layer_norm_backward: _layer_norm_backward,
    }
