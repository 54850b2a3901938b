"""``F.linear``'s bias added in place, as eager code does outside any dispatch mode.

``at::linear`` (``aten/src/ATen/native/Linear.cpp``) computes a 2-D input, or a contiguous one
with a 1-D bias, as one ``addmm``; any other input (a transposed batch, as
``nn.MultiheadAttention`` makes with ``batch_first=True``) as ``matmul(input, weight.t())``
and then ``output.add_(bias)``. That add is in place unless the bias is "tensor-subclass-like",
which every tensor is while a dispatch mode is active: traced under memfit's recorder it is an
out-of-place ``add``, one more tensor of the output's size for a moment. While
``linear_bias_in_place()`` is active, ``linear`` on CPU tensors (fake ones included) runs that
code with the in-place add, registered at the AutogradCPU key so that autograd records the
same operators as before.

Measured on the H200 (bench/results/snapshots/inf-tv-vit-b16-bf16-mixed_steps_snapshot_h200
.pickle.gz): each attention layer's input projection (116 MB at batch 128) was added to in
place; traced out of place, each needed a second 116 MB block.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor

__all__ = ["linear_bias_in_place"]

_LOCK = threading.Lock()
aten = torch.ops.aten
# what at::isTensorSubclassLike is false for on the GPU: plain tensors (fake ones stand for them)
_PLAIN = (torch.Tensor, torch.nn.Parameter, FakeTensor)


def _linear(
    keyset: Any, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    if bias is not None and input.dim() == 2:
        return aten.addmm(bias, input, weight.t())
    fusable = bias is not None and bias.squeeze().dim() == 1 and bias.is_contiguous()
    if fusable and input.is_contiguous() and input.dim() > 2:
        rows = input.numel() // input.shape[-1] if input.shape[-1] else 0
        flat = aten.addmm(bias, input.reshape(rows, input.shape[-1]), weight.t())
        return flat.view(*input.shape[:-1], flat.shape[-1])
    output = aten.matmul(input, weight.t())
    if bias is None:
        return output
    if type(bias) in _PLAIN and type(output) in _PLAIN:
        return output.add_(bias)
    return output + bias


@contextlib.contextmanager
def linear_bias_in_place() -> Iterator[None]:
    """``linear`` on CPU tensors adds its bias as the GPU's eager code does (module docstring)."""
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = torch.library.Library("aten", "IMPL")
        try:
            library.impl("linear", _linear, "AutogradCPU", with_keyset=True)
            yield
        finally:
            library._destroy()
