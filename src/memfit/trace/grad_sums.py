"""Gradients summed in place by the autograd engine, as on a GPU with no dispatch mode.

When two gradients reach one input of a node (a tensor used twice: tied embeddings, a residual
stream, any fan-out), the engine's ``InputBuffer::accumulate``
(``torch/csrc/autograd/input_buffer.cpp``) adds the new one *into* the buffered one when it
holds the last reference to it (or into the new one), so the sum allocates nothing. It refuses
to for "tensor-subclass-like" tensors, and ``at::isTensorSubclassLike`` is true for every tensor
while a dispatch mode is active: under memfit's recorder (and under ``FakeTensorMode``) each
such sum is an out-of-place ``old + new``, one more tensor of the gradient's size for a moment.
The recorder therefore runs such a sum as ``old.add_(new)`` (priced as that kernel by the
step-time model: the same bytes as the sum), under the engine's conditions: grad mode off,
inside backward, two dense tensors of one shape and dtype, the one summed into referenced by
nothing else.

Measured on the H200 (bench/results/snapshots/northstar_b16_one_step_stacks_h200.pickle.gz,
a 3B model with tied embeddings): the embedding's two float32 gradients (1.47 GiB each) were
summed into the first one, the second freed; traced out of place, the sum needed a third
1.47 GiB block and a sixth 1.47 GiB segment.

Known limitations:
    "Referenced by nothing else" is read from the storage's use count: a view of the gradient
    kept elsewhere is seen, the gradient tensor itself kept from Python (a hook appending it to
    a list) is not, nor the base of a gradient that is a view when something else holds that
    base; such a sum is made in place here where the engine allocates it. The
    engine's sums cannot be told apart from a C++ backward formula's own ``a + b`` of two
    temporaries (rare: ``lerp``, ``addcmul`` and a few other formulas sum terms); such a sum
    is also made in place here, one tensor below the real figure for a moment.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import _prims_common

__all__ = ["sum_in_place"]

# "some permutation of its dimensions is contiguous" (newer torch releases' name, then older)
_dense = getattr(
    _prims_common,
    "is_non_overlapping_and_dense_or_false",
    getattr(_prims_common, "is_non_overlapping_and_dense", torch.Tensor.is_contiguous),
)

_ADD = torch.ops.aten.add.Tensor
# registered with CUDA's module in older releases (absent from their CPU-only builds, pytorch
# issue 131881): without it the sums stay out of place, as traced before
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)
# a storage referenced by one tensor, seen through the UntypedStorage made to ask
_ONE_OWNER = 2


def _summable(tensor: torch.Tensor) -> bool:
    """What ``can_accumulate_inplace`` asks: dense (in any order of its dimensions: the sum
    keeps that layout, which decides the copies later nodes make), and nothing else holds its
    storage."""
    if _USE_COUNT is None or tensor.numel() == 0 or not _dense(tensor):
        return False
    storage = tensor.untyped_storage()
    # under a dispatch mode a backward formula's view (TBackward's ``grad.t()``) keeps its
    # base, which holds the storage too; without a mode the engine sees the view alone
    owners = _ONE_OWNER + (tensor._base is not None)
    return bool(_USE_COUNT(storage._cdata) == owners)


def sum_in_place(func: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(into, other)`` when the engine would make ``func(*args, **kwargs)`` an in-place
    ``into.add_(other)``, else None (the operator runs as it is)."""
    if func is not _ADD or kwargs.get("alpha", 1) != 1 or len(args) != 2:
        return None
    old, new = args
    if not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor)):
        return None
    if torch.is_grad_enabled() or torch._C._current_autograd_node() is None:
        return None
    if old.shape != new.shape or old.dtype != new.dtype or old.device != new.device:
        return None
    for into, other in ((old, new), (new, old)):
        if _summable(into):
            return into, other
    return None
