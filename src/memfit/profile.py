"""MemoryProfile: what the memory of one training step is, predicted or measured.

The one object that flows from ``trace/`` (prediction) and ``measure/`` (a real GPU run) to
``plan/`` and ``report/``. Bytes are ints everywhere; units appear only when rendering. JSON keys
are the plain words below (the category names are PyTorch MemTracker's: param, buffer, grad,
optimizer, activation, temporary, other).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from memfit.errors import InvalidInputError

__all__ = [
    "Category",
    "Phase",
    "ModuleMemory",
    "TimelineEvent",
    "LiveTensor",
    "MemoryProfile",
    "SCHEMA_VERSION",
]

SCHEMA_VERSION = 1


class Category(str, Enum):
    """What a byte of GPU memory holds."""

    PARAM = "param"
    BUFFER = "buffer"
    GRAD = "grad"
    OPTIMIZER = "optimizer"
    ACTIVATION = "activation"  # allocated during forward (saved for backward while it lives)
    TEMPORARY = "temporary"  # allocated during backward or the optimizer step, not grad or state
    OTHER = "other"  # inputs, library workspaces, anything allocated outside the step


class Phase(str, Enum):
    SETUP = "setup"
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModuleMemory:
    """Memory that one module owns or causes, in bytes.

    ``activation_bytes`` counts what was allocated while the module (or a child) ran forward and is
    still alive when the forward pass ends: what the module saves for backward.
    ``self_activation_bytes`` counts only what it allocated itself, children excluded.
    """

    fqn: str
    module_type: str
    param_bytes: int = 0
    grad_bytes: int = 0
    activation_bytes: int = 0
    self_activation_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEvent:
    """Live bytes right after one allocation or free (timelines are thinned to a few thousand)."""

    index: int
    phase: Phase
    allocated: int
    reserved: int
    module: str = ""
    op: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveTensor:
    """One allocation alive at the peak."""

    num_bytes: int
    category: Category
    module: str
    op: str
    shape: tuple[int, ...] = ()
    dtype: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryProfile:
    """The memory of one steady-state training (or inference) step on one device.

    Attributes:
        source: "estimate" (traced on fake tensors) or "measure" (run on a real GPU).
        peak_allocated: what ``torch.cuda.max_memory_allocated()`` reports for the step.
        peak_reserved: what ``torch.cuda.max_memory_reserved()`` reports for the step.
        by_category: allocated bytes by category at the allocated peak; sums to peak_allocated.
        modules: per-module memory in model order (root first).
        timeline: live bytes over the step, forward, backward and optimizer phases.
        outside_pytorch: memory the GPU holds outside PyTorch's allocator (CUDA context,
            library handles), for an nvidia-smi-level figure.
        alive_at_peak: the largest allocations alive at the allocated peak.
        host_bytes: host memory the plan's techniques hold during the step, by part (master
            weights, optimizer state, gradient staging, offloaded activations); empty when
            nothing is offloaded. Parts held all step long and the activations offloaded by
            the end of forward add up: their sum is the step's host peak (``host_peak``).
    """

    source: str
    model: str
    device: str
    device_memory: int
    precision: str
    optimizer: str | None
    batch: str
    peak_allocated: int
    peak_reserved: int
    by_category: Mapping[Category, int]
    modules: tuple[ModuleMemory, ...] = ()
    timeline: tuple[TimelineEvent, ...] = ()
    peak_phase: Phase = Phase.FORWARD
    peak_module: str = ""
    peak_op: str = ""
    alive_at_peak: tuple[LiveTensor, ...] = ()
    outside_pytorch: Mapping[str, int] = field(default_factory=dict)
    plan: str = ""
    step_time_s: float | None = None
    warnings: tuple[str, ...] = ()
    host_bytes: Mapping[str, int] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def host_peak(self) -> int:
        """Host memory the techniques add at the step's peak (0 when nothing is offloaded)."""
        return sum(self.host_bytes.values())

    @property
    def outside_pytorch_bytes(self) -> int:
        return sum(self.outside_pytorch.values())

    @property
    def device_total(self) -> int:
        """What nvidia-smi would show in use at the peak: reserved plus memory outside PyTorch."""
        return self.peak_reserved + self.outside_pytorch_bytes

    @property
    def usable_memory(self) -> int:
        """The device's memory minus what PyTorch cannot use (CUDA context, libraries)."""
        return self.device_memory - self.outside_pytorch_bytes

    def fits(self, memory: int | None = None) -> bool:
        """Whether the reserved peak fits ``memory`` (default: the device's usable memory)."""
        limit = self.usable_memory if memory is None else memory
        return self.peak_reserved <= limit

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemoryProfile:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidInputError(
                f"profile schema_version {version!r} is not supported; this memfit reads version "
                f"{SCHEMA_VERSION}. Re-create the profile with this version of memfit."
            )
        try:
            return cls(
                **{
                    **data,
                    "by_category": {Category(k): int(v) for k, v in data["by_category"].items()},
                    "modules": tuple(ModuleMemory(**m) for m in data.get("modules", ())),
                    "timeline": tuple(
                        TimelineEvent(**{**e, "phase": Phase(e["phase"])})
                        for e in data.get("timeline", ())
                    ),
                    "peak_phase": Phase(data.get("peak_phase", "forward")),
                    "alive_at_peak": tuple(
                        LiveTensor(
                            **{**t, "category": Category(t["category"]), "shape": tuple(t["shape"])}
                        )
                        for t in data.get("alive_at_peak", ())
                    ),
                    "outside_pytorch": dict(data.get("outside_pytorch", {})),
                    "warnings": tuple(data.get("warnings", ())),
                    "host_bytes": {k: int(v) for k, v in data.get("host_bytes", {}).items()},
                }
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidInputError(
                f"this JSON is not a memfit MemoryProfile ({error}); create one with "
                f"`memfit estimate ... --format json` or MemoryProfile.to_json()"
            ) from error

    @classmethod
    def from_json(cls, text: str) -> MemoryProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"profile is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise InvalidInputError("profile JSON must be an object")
        return cls.from_dict(data)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_to_plain(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value
