"""Batches: calling a model with one, cutting one into micro-batches, naming its shape.

A batch is a tree: tensors of one or more dimensions are leaves cut along dim 0 (as views, no
copy); mappings (``dict``, ``OrderedDict``, Hugging Face ``BatchEncoding`` and other
``UserDict``-likes), lists and tuples (named or not) are walked; tensors without dimensions and
plain values (``None``, numbers, strings, dtypes, devices) are shared by every micro-batch.
Anything else needs a ``splitter``.

Note: [exact micro-batch sizes] The guard only uses sizes that keep the update exact: ``m``
repeated ``N // m`` times and one remainder micro-batch of ``N % m``; with each micro-batch's loss
weighted by ``n_i / N`` the sum of the micro-batch gradients is the full-batch gradient of a loss
that is a mean over samples. (accelerate's ``int(bs * 0.9)`` back-off with
``N // m`` accumulation steps can drop up to half the samples of a step; see the prior-art notes.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import torch

from memfit.errors import UnsplittableBatchError, UnsupportedModelError

__all__ = [
    "Splitter",
    "batch_size_of",
    "split_batch",
    "micro_batch_sizes",
    "shape_key",
    "call_model",
    "describe_batch",
]

Splitter = Callable[[Any, list[int]], Sequence[Any]]
"""``splitter(batch, sizes) -> micro-batches``: the i-th holds the next ``sizes[i]`` samples."""

_SHARED = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
_FIX = (
    "pass OOMGuard(..., splitter=fn) where fn(batch, sizes) returns the micro-batches, the "
    "i-th holding the next sizes[i] samples"
)


def _walk(batch: Any, path: str, found: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(batch, torch.Tensor):
        if batch.dim() > 0:
            found.append((path, batch))
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            _walk(value, f"{path}[{key!r}]", found)
    elif isinstance(batch, (list, tuple)):
        for index, value in enumerate(batch):
            _walk(value, f"{path}[{index}]", found)
    elif not isinstance(batch, _SHARED):
        raise UnsplittableBatchError(
            f"cannot split batch{path} of type {type(batch).__name__}: the guard cuts tensors "
            f"along dim 0 inside dicts, lists and tuples, and shares plain values; {_FIX}"
        )


def batch_size_of(batch: Any, *, splitter: Splitter | None = None) -> int:
    """Samples in a batch: the common first dimension of its tensors.

    Args:
        batch: a tensor, or a tree of mappings, lists and tuples holding tensors.
        splitter: when given, the batch is opaque to the guard; its size is ``len(batch)``.

    Raises:
        UnsplittableBatchError: no tensor to cut, an unknown leaf type, or tensors whose first
            dimensions differ.
    """
    if splitter is not None:
        try:
            return len(batch)
        except TypeError:
            raise UnsplittableBatchError(
                f"a batch of type {type(batch).__name__} has no len(), which the guard needs "
                f"with a custom splitter; give the batch a __len__ returning its sample count"
            ) from None
    found: list[tuple[str, torch.Tensor]] = []
    _walk(batch, "", found)
    if not found:
        raise UnsplittableBatchError(
            f"batch of type {type(batch).__name__} holds no tensor with a batch dimension, so "
            f"there is nothing to cut into micro-batches; {_FIX}"
        )
    first_path, first = found[0]
    size = int(first.shape[0])
    for path, tensor in found[1:]:
        if int(tensor.shape[0]) != size:
            raise UnsplittableBatchError(
                f"batch{path} has {tensor.shape[0]} rows but batch{first_path} has {size}: the "
                f"guard cuts every tensor along dim 0 and needs them to agree; put per-batch "
                f"values in 0-dim tensors or plain Python values, or {_FIX}"
            )
    return size


def _cut(batch: Any, sizes: list[int]) -> list[Any]:
    k = len(sizes)
    if isinstance(batch, torch.Tensor):
        return list(batch.split(sizes)) if batch.dim() > 0 else [batch] * k
    if isinstance(batch, Mapping):
        columns = {key: _cut(value, sizes) for key, value in batch.items()}
        parts = []
        for i in range(k):
            if isinstance(batch, MutableMapping):
                part = copy.copy(
                    batch
                )  # keeps the type and its extras (BatchEncoding, defaultdict)
                for key, values in columns.items():
                    part[key] = values[i]
            else:
                part = {key: values[i] for key, values in columns.items()}
            parts.append(part)
        return parts
    if isinstance(batch, (list, tuple)):
        columns_seq = [_cut(value, sizes) for value in batch]
        rows = [[column[i] for column in columns_seq] for i in range(k)]
        if isinstance(batch, list):
            return rows
        if hasattr(batch, "_fields"):  # namedtuple
            return [type(batch)(*row) for row in rows]
        return [type(batch)(row) for row in rows]
    return [batch] * k


def split_batch(batch: Any, sizes: list[int], *, splitter: Splitter | None = None) -> list[Any]:
    """Cut ``batch`` into ``len(sizes)`` micro-batches of ``sizes[i]`` samples each, in order.

    Tensors are cut with ``Tensor.split`` (views of the batch: no copy).

    Raises:
        UnsplittableBatchError: the custom splitter returned the wrong number of parts.
    """
    if len(sizes) == 1:
        return [batch]
    if splitter is None:
        return _cut(batch, sizes)
    parts = list(splitter(batch, list(sizes)))
    if len(parts) != len(sizes):
        raise UnsplittableBatchError(
            f"splitter returned {len(parts)} micro-batches for sizes {sizes}; it must return "
            f"one micro-batch per size, in order"
        )
    return parts


def micro_batch_sizes(batch_size: int, micro_batch_size: int) -> list[int]:
    """``[m] * (N // m)`` plus a remainder ``N % m`` when there is one.

    >>> micro_batch_sizes(10, 4)
    [4, 4, 2]
    """
    m = max(1, min(micro_batch_size, batch_size))
    sizes = [m] * (batch_size // m)
    if batch_size % m:
        sizes.append(batch_size % m)
    return sizes


def shape_key(batch: Any) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
    """What decides the memory of one sample: per-sample shapes and dtypes of the tensors.

    Two batches with the same key need the same memory per sample, so a micro-batch size that
    fitted one fits the other. Batches the default walker cannot read get the empty key.
    """
    found: list[tuple[str, torch.Tensor]] = []
    try:
        _walk(batch, "", found)
    except UnsplittableBatchError:
        return ()
    return tuple((tuple(t.shape[1:]), t.dtype) for _, t in found)


def per_sample_numel(key: tuple[tuple[tuple[int, ...], torch.dtype], ...]) -> int:
    """Elements per sample over all tensors of a shape key (to compare keys by size)."""
    total = 0
    for shape, _ in key:
        count = 1
        for dim in shape:
            count *= dim
        total += count
    return total


def call_model(model: Any, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(**batch)`` for a dict, ``model(*batch)`` otherwise.

    Raises:
        UnsupportedModelError: when the batch does not fit the model's signature.
    """
    try:
        if isinstance(batch, torch.Tensor):
            return model(batch)
        if isinstance(batch, Mapping):
            return model(**batch)
        if isinstance(batch, (tuple, list)):
            return model(*batch)
    except TypeError as error:
        if "argument" not in str(error):
            raise
        raise UnsupportedModelError(
            f"the batch ({describe_batch(batch)}) does not fit the model's forward "
            f"signature: {error}. A dict is passed as keyword arguments, a tuple as positional "
            f"ones; give the inputs the model's forward() expects (see --input)."
        ) from error
    raise UnsupportedModelError(
        f"batch of type {type(batch).__name__} is not supported; pass a tensor, a dict of "
        f"tensors (model(**batch)) or a tuple of tensors (model(*batch))"
    )


def describe_batch(batch: Any) -> str:
    """A short text such as ``input_ids=int64[8,1024] labels=int64[8,1024]``."""

    def one(tensor: Any) -> str:
        if isinstance(tensor, torch.Tensor):
            dtype = str(tensor.dtype).removeprefix("torch.")
            return f"{dtype}[{','.join(str(d) for d in tensor.shape)}]"
        return type(tensor).__name__

    if isinstance(batch, Mapping):
        return " ".join(f"{k}={one(v)}" for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return " ".join(one(v) for v in batch)
    return one(batch)
