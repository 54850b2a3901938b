"""Example inputs: the input-spec mini-language.

An input spec names each tensor the model takes, its dtype and shape, and for integer inputs an
exclusive upper bound on the values (token ids, class labels)::

    input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257
    pixel_values=float32[128,3,224,224] labels=int64[128]<1000
    float32[32,784]                       # one unnamed tensor: model(x)
    float32[32,784] int64[32]<10          # unnamed tensors: model(x, y)

Items are separated by spaces or semicolons. A batch is called as the model expects it
(``memfit.step.batch.call_model``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memfit import zoo
from memfit.errors import InvalidInputError

__all__ = ["TensorSpec", "SpecBatch", "parse_input_spec", "make_inputs", "resolve"]

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
            raise InvalidInputError(
                f"input spec item {item!r} has a dimension < 1; every dimension is 1 or more. "
                f"{_SPEC_HELP[0].upper()}{_SPEC_HELP[1:]}"
            )
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


@dataclass(frozen=True)
class SpecBatch:
    """A batch maker from an input spec, which remembers the spec's bounds (``<N``)."""

    specs: tuple[TensorSpec, ...]

    def __call__(self) -> Any:
        return make_inputs(list(self.specs))

    def bounds(self) -> dict[Any, int]:
        """The declared exclusive upper bound of each integer input, by name or position."""
        named = self.specs[0].name is not None
        keys = [
            s.name if named else (i if len(self.specs) > 1 else None)
            for i, s in enumerate(self.specs)
        ]
        return {k: s.high for k, s in zip(keys, self.specs, strict=True) if s.high is not None}


def resolve(
    model: Any, batch: Any, batch_size: int | None = None, seq_len: int | None = None
) -> tuple[str, nn.Module | Callable[[], nn.Module], Any]:
    """What ``memfit.estimate`` and ``memfit.measure`` take, as (name, model or builder, batch).

    A zoo name becomes its builder and (without a batch) its example batch, of ``batch_size``
    and ``seq_len`` if given; an input spec becomes a maker of those inputs.

    Raises:
        InvalidInputError: no batch for a model that is not a zoo name, or a malformed spec.
    """
    name = None
    if isinstance(model, str):
        entry = zoo.get(model)
        name, model = entry.name, entry.build
        if batch is None:
            batch = lambda: entry.make_batch(batch_size, seq_len)  # noqa: E731
    if batch is None:
        raise InvalidInputError(
            "no batch given; pass example inputs (a tensor, dict or tuple), an input spec such "
            "as 'input_ids=int64[8,1024]<50257', or a zoo model name for its default batch"
        )
    if isinstance(batch, str):
        batch = SpecBatch(tuple(parse_input_spec(batch)))
    if name is None:
        name = getattr(model, "__name__", None) if not isinstance(model, nn.Module) else None
        name = name or type(model).__name__
    return name, model, batch
