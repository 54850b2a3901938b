"""Example inputs: the input-spec mini-language and calling a model with a batch.

An input spec names each tensor the model takes, its dtype and shape, and for integer inputs an
exclusive upper bound on the values (token ids, class labels)::

    input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257
    pixel_values=float32[128,3,224,224] labels=int64[128]<1000
    float32[32,784]                       # one unnamed tensor: model(x)
    float32[32,784] int64[32]<10          # unnamed tensors: model(x, y)

Items are separated by spaces or semicolons. A batch is called as the model expects it: a tensor
as ``model(batch)``, a dict as ``model(**batch)``, a tuple or list as ``model(*batch)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from memfit.errors import InvalidInputError, UnsupportedModelError

__all__ = ["TensorSpec", "parse_input_spec", "make_inputs", "call_model", "describe_batch"]

_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_ITEM = re.compile(
    r"^(?:(?P<name>[A-Za-z_]\w*)=)?(?P<dtype>[a-z0-9]+)\[(?P<shape>[^\]]*)\](?:<(?P<high>\d+))?$"
)
_SPEC_HELP = (
    "write name=dtype[d0,d1,...] items separated by spaces, with <N after integer inputs for "
    "their value range, e.g. 'input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257'"
)


@dataclass(frozen=True)
class TensorSpec:
    name: str | None
    dtype: torch.dtype
    shape: tuple[int, ...]
    high: int | None = None


def parse_input_spec(text: str) -> list[TensorSpec]:
    """Parse an input spec (see the module docstring).

    Raises:
        InvalidInputError: naming the malformed item and showing the format.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(f"input spec {text!r} is empty; {_SPEC_HELP}")
    specs: list[TensorSpec] = []
    for item in re.split(r"[\s;]+", text.strip()):
        match = _ITEM.match(item)
        if match is None:
            raise InvalidInputError(f"input spec item {item!r} is malformed; {_SPEC_HELP}")
        dtype_name = match.group("dtype")
        if dtype_name not in _DTYPES:
            raise InvalidInputError(
                f"input spec item {item!r} has unknown dtype {dtype_name!r}; allowed: "
                f"{', '.join(sorted(_DTYPES))}"
            )
        try:
            shape = tuple(int(d) for d in match.group("shape").split(",") if d.strip())
        except ValueError:
            raise InvalidInputError(
                f"input spec item {item!r} has a shape that is not a list of integers; {_SPEC_HELP}"
            ) from None
        if any(d < 1 for d in shape):
            raise InvalidInputError(f"input spec item {item!r} has a dimension < 1")
        high = int(match.group("high")) if match.group("high") else None
        dtype = _DTYPES[dtype_name]
        if high is not None and (dtype.is_floating_point or dtype == torch.bool or high < 1):
            raise InvalidInputError(
                f"input spec item {item!r}: '<{high}' bounds integer inputs only, and must be >= 1"
            )
        specs.append(TensorSpec(match.group("name"), dtype, shape, high))
    named = [s.name is not None for s in specs]
    if any(named) and not all(named):
        raise InvalidInputError(
            f"input spec {text!r} mixes named and unnamed tensors; name all of them "
            f"(called as model(**batch)) or none (called as model(*batch))"
        )
    return specs


def make_inputs(specs: list[TensorSpec], *, device: str | torch.device = "cpu") -> Any:
    """Tensors for ``specs``: one tensor, a dict (named) or a tuple (unnamed)."""
    tensors = []
    for spec in specs:
        if spec.dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, dtype=spec.dtype, device=device))
        elif spec.dtype == torch.bool:
            tensors.append(torch.ones(spec.shape, dtype=torch.bool, device=device))
        else:
            high = spec.high if spec.high is not None else 2
            tensors.append(torch.randint(0, high, spec.shape, dtype=spec.dtype, device=device))
    if specs[0].name is not None:
        return {spec.name: tensor for spec, tensor in zip(specs, tensors, strict=True)}
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


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
