"""What to do when an operator cannot run on fake tensors: assume, warn, keep going.

Fake tensors have shapes but no values, so three kinds of operators fail on them:

* data-dependent output shapes (``nonzero``, ``masked_select``, ``unique``, boolean indexing):
  memfit assumes the largest possible output (every element selected), an upper bound on the
  memory; ``bincount`` gets ``minlength`` bins (else one per element);
* reading a value (``.item()``): memfit assumes 1 (or True), which lets typical guards pass;
  sizes read that way that then fail to split a dimension (a mixture-of-experts layer's tokens
  per expert) are replaced by an even split of it;
* operators with no fake/meta implementation (custom CUDA kernels): memfit assumes one output per
  tensor return, shaped and typed like the first tensor input (the common elementwise case).
  Register a real shape rule with ``torch.library.register_fake`` for exact numbers;
* operators whose meta kernel is stricter than their CUDA kernel: ``_grouped_mm`` (mixture-of-
  experts layers) rejects float32 on fake tensors, where CUDA runs a per-group loop into one
  output; memfit allocates that output, exactly (no warning: nothing is assumed).

Each assumption is reported once per operator (and shape assumed) in the profile's warnings, with
its calls and the bytes of the results memfit made up; memory is never dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
)
from torch.utils._pytree import tree_flatten

from memfit.units import format_bytes

__all__ = ["FALLBACK_ERRORS", "Assumptions", "fallback", "stricter_than_cuda"]

FALLBACK_ERRORS = (
    DataDependentOutputException,
    DynamicOutputShapeException,
    UnsupportedOperatorException,
    RuntimeError,  # custom ops without a fake impl say so in a RuntimeError (checked below)
    NotImplementedError,
)


class Assumptions:
    """What was assumed for operators fake tensors cannot run: per warning, its calls and the
    bytes of the results made up for them."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {}

    def add(self, warning: str, result: Any) -> None:
        entry = self.seen.setdefault(warning, [0, 0])
        entry[0] += 1
        entry[1] += sum(
            t.numel() * t.element_size()
            for t in tree_flatten(result)[0]
            if isinstance(t, torch.Tensor)
        )

    def messages(self) -> list[str]:
        return [
            f"{warning} ({calls} call{'s' if calls > 1 else ''}, "
            + (f"{format_bytes(made)} of results assumed)" if made else "no memory assumed)")
            for warning, (calls, made) in self.seen.items()
        ]


def _missing_fake_impl(error: Exception) -> bool:
    if isinstance(error, UnsupportedOperatorException):
        return True
    text = str(error).lower()
    return isinstance(error, (RuntimeError, NotImplementedError)) and (
        "fake impl" in text or "meta" in text and "implement" in text
    )


aten = torch.ops.aten


def _first_tensor(args: Any) -> torch.Tensor | None:
    return next((t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)), None)


def _long_indices(indices: list[Any]) -> list[Any]:
    """Boolean masks as the long indices ``nonzero`` would give if every element were True."""
    converted: list[Any] = []
    for index in indices:
        if isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8):
            converted += [torch.empty(index.numel(), dtype=torch.long)] * index.dim()
        else:
            converted.append(index)
    return converted


def _upper_bound(func: Any, args: tuple, kwargs: dict) -> Any:
    packet = func.overloadpacket
    source = args[0]
    if packet is aten.index:
        return aten.index.Tensor(source, _long_indices(list(args[1])))
    if packet in (aten.index_put, aten.index_put_):
        return source if packet is aten.index_put_ else torch.empty_like(source)
    if packet is aten.nonzero:
        return torch.empty(source.numel(), source.dim(), dtype=torch.long)
    if packet is aten.masked_select:
        shape = torch.broadcast_shapes(source.shape, args[1].shape)
        return source.new_empty(torch.Size(shape).numel())
    if packet is aten.bincount:
        # as many bins as asked for (counts per class or per expert), else one per element
        weights = args[1] if len(args) > 1 else kwargs.get("weights")
        minlength = args[2] if len(args) > 2 else kwargs.get("minlength", 0)
        dtype = torch.long if weights is None else torch.promote_types(weights.dtype, torch.float)
        return torch.empty(minlength or source.numel(), dtype=dtype)
    if packet in (aten._unique2, aten.unique_dim, aten.unique_consecutive, aten._unique):
        values = source.new_empty(source.numel())
        inverse = torch.empty(source.shape, dtype=torch.long)
        counts = torch.empty(source.numel(), dtype=torch.long)
        return (values, inverse) if packet is aten._unique else (values, inverse, counts)
    return None


def _grouped_mm_output(
    mat_a: torch.Tensor,
    mat_b: torch.Tensor,
    offs: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The output CUDA's ``_grouped_mm`` allocates before its fallback loop fills it
    (``create_grouped_gemm_output_tensor``, aten/src/ATen/native/GroupedMMUtils.h): rows
    padded to 16 bytes."""
    a_2d, b_2d = mat_a.dim() == 2, mat_b.dim() == 2
    if a_2d and b_2d:
        assert offs is not None
        size = [offs.size(0), mat_a.size(0), mat_b.size(1)]
    elif a_2d:
        size = [mat_a.size(0), mat_b.size(-1)]
    elif b_2d:
        size = [mat_a.size(1), mat_b.size(1)]
    else:
        size = [mat_a.size(0), mat_a.size(1), mat_b.size(-1)]
    dtype = out_dtype or mat_a.dtype
    alignment = max(1, 16 // dtype.itemsize)
    padded = -(-size[-1] // alignment) * alignment
    stride = [size[1] * padded, padded, 1] if len(size) == 3 else [padded, 1]
    return torch.empty_strided(size, stride, dtype=dtype, device=mat_a.device)


def _balanced_split(source: torch.Tensor, sizes: list[int], dim: int = 0) -> Any:
    """``split_with_sizes`` into as many pieces, of sizes as equal as the dimension allows."""
    total, parts = source.shape[dim], len(sizes)
    even = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return aten.split_with_sizes.default(source, even, dim)


def stricter_than_cuda(func: Any, args: tuple, kwargs: dict) -> Any | None:
    """The result of an operator whose meta kernel would refuse what CUDA runs, else None."""
    grouped_mm = func.__name__ == "_grouped_mm.default" and func.namespace == "aten"  # no str()
    if grouped_mm and args[0].dtype in (torch.float32, torch.float16):
        return _grouped_mm_output(*args, **kwargs)
    return None


def fallback(func: Any, args: tuple, kwargs: dict, error: Exception) -> tuple[Any, str]:
    """An assumed result for ``func`` and the warning that says what was assumed.

    Raises:
        The original error when no assumption applies.
    """
    name = str(func).removesuffix(".default")
    if isinstance(error, DataDependentOutputException) and func is aten._local_scalar_dense.default:
        tensor = args[0]
        if tensor.dtype == torch.bool:
            value: Any = True
        elif tensor.is_floating_point():
            value = 1.0
        else:
            value = 1
        return value, (
            f"{name}: the model reads a tensor value (.item()); fake tensors have none, so "
            f"memfit assumed {value!r}. Control flow that depends on it follows that branch."
        )
    if isinstance(error, DynamicOutputShapeException):
        result = _upper_bound(func, args, kwargs)
        if result is not None:
            return result, (
                f"{name}: its output size depends on tensor values; memfit assumed the largest "
                f"possible size (every element), an upper bound on its memory"
            )
    if func is aten.split_with_sizes.default and "sum exactly" in str(error):
        return _balanced_split(*args, **kwargs), (
            f"{name}: its split sizes were read from tensor values (a mixture-of-experts "
            f"layer's tokens per expert, say), which fake tensors do not have; memfit split "
            f"the dimension evenly (balanced routing)"
        )
    if _missing_fake_impl(error):
        like = _first_tensor((args, kwargs))
        returns = [r for r in func._schema.returns if "Tensor" in str(r.type)]
        if like is not None and returns:
            outputs = tuple(torch.empty_like(like) for _ in returns)
            return outputs[0] if len(outputs) == 1 else outputs, (
                f"{name} has no fake-tensor implementation; memfit assumed each output is shaped "
                f"like its first input {tuple(like.shape)} {like.dtype}. Register its shape rule "
                f"with torch.library.register_fake('{name}') for exact numbers."
            )
    raise error
