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
from memfit.json_fields import Fields

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
        versions: the software that made the profile: memfit, Python, torch, and the model
            libraries the model came from (transformers, timm, peft, torchvision); measured
            profiles add the CUDA runtime and cuDNN they ran with.
        target_stack: the target's software the figures describe: for an estimate, the torch
            release and cuDNN whose kernel choices the device model follows; for a measurement,
            what ran.
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
    versions: Mapping[str, str] = field(default_factory=dict)
    target_stack: Mapping[str, str] = field(default_factory=dict)
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
        """Read a profile written by ``to_dict``; every field's type is checked.

        Raises:
            InvalidInputError: not a profile, another schema version, or a field of the wrong
                type (the message names it).
        """
        if not isinstance(data, Mapping) or not _PROFILE_KEYS & set(data):
            found = sorted(map(str, data))[:8] if isinstance(data, Mapping) else type(data).__name__
            raise InvalidInputError(
                f"this JSON is not a memfit profile or plan (found {found}; a profile has "
                f"schema_version, peak_allocated, peak_reserved, by_category, ...). Write one "
                f"with `memfit estimate MODEL --format json > profile.json` or `memfit plan "
                f"MODEL --budget 16GiB --out plan.json`"
            )
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidInputError(
                f"profile schema_version {version!r} is not supported; this memfit reads version "
                f"{SCHEMA_VERSION}. Re-create the profile with this version of memfit."
            )
        return _read_profile(Fields(data, "profile", _FIX))

    @classmethod
    def from_json(cls, text: str) -> MemoryProfile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidInputError(f"profile is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise InvalidInputError(
                f"this JSON holds a {type(data).__name__}, not a memfit profile (an object with "
                f"schema_version, peak_allocated, ...); write one with `memfit estimate MODEL "
                f"--format json > profile.json` or MemoryProfile.to_json()"
            )
        return cls.from_dict(data)


_FIX = (
    "write profiles with memfit (`memfit estimate MODEL --format json`, "
    "MemoryProfile.to_json()) or correct that field"
)
_PROFILE_KEYS = {"schema_version", "peak_allocated", "peak_reserved", "by_category"}


def _enum(kind: type[Enum], value: str, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)  # type: ignore[attr-defined]
        raise InvalidInputError(f"{where} is {value!r}; allowed: {allowed}; {_FIX}") from None


def _read_module(item: Any, i: int) -> ModuleMemory:
    f = Fields(item, f"profile module {i}", _FIX)
    f.unknown({x.name for x in dataclasses.fields(ModuleMemory)})
    return ModuleMemory(
        fqn=f.get("fqn", "str"),
        module_type=f.get("module_type", "str"),
        **{k: f.get(k, "bytes", 0) for k in _MODULE_BYTES},
    )


_MODULE_BYTES = ("param_bytes", "grad_bytes", "activation_bytes", "self_activation_bytes")


def _read_event(item: Any, i: int) -> TimelineEvent:
    f = Fields(item, f"profile timeline event {i}", _FIX)
    f.unknown({x.name for x in dataclasses.fields(TimelineEvent)})
    return TimelineEvent(
        index=f.get("index", "count"),
        phase=_enum(Phase, f.get("phase", "str"), f"profile timeline event {i} phase"),
        allocated=f.get("allocated", "bytes"),
        reserved=f.get("reserved", "bytes"),
        module=f.get("module", "str", ""),
        op=f.get("op", "str", ""),
    )


def _read_tensor(item: Any, i: int) -> LiveTensor:
    f = Fields(item, f"profile alive_at_peak item {i}", _FIX)
    f.unknown({x.name for x in dataclasses.fields(LiveTensor)})
    return LiveTensor(
        num_bytes=f.get("num_bytes", "bytes"),
        category=_enum(Category, f.get("category", "str"), f"alive_at_peak item {i} category"),
        module=f.get("module", "str", ""),
        op=f.get("op", "str", ""),
        shape=tuple(f.items("shape", "count")),
        dtype=f.get("dtype", "str", ""),
    )


def _read_profile(f: Fields) -> MemoryProfile:
    f.unknown({x.name for x in dataclasses.fields(MemoryProfile)})
    by_category = f.get("by_category", "object")
    categories = {}
    for key in by_category:
        category = _enum(Category, key, "profile by_category key")
        categories[category] = Fields(by_category, "profile by_category", _FIX).get(key, "bytes")
    outside = f.get("outside_pytorch", "object", {})
    host = f.get("host_bytes", "object", {})
    read = dict(
        source=f.get("source", "str"),
        model=f.get("model", "str"),
        device=f.get("device", "str"),
        device_memory=f.get("device_memory", "bytes"),
        precision=f.get("precision", "str"),
        optimizer=f.get("optimizer", "str", None, optional=True),
        batch=f.get("batch", "str", ""),
        peak_allocated=f.get("peak_allocated", "bytes"),
        peak_reserved=f.get("peak_reserved", "bytes"),
        by_category=categories,
        modules=tuple(_read_module(m, i) for i, m in enumerate(f.get("modules", "list", []))),
        timeline=tuple(_read_event(e, i) for i, e in enumerate(f.get("timeline", "list", []))),
        peak_phase=_enum(Phase, f.get("peak_phase", "str", "forward"), "profile peak_phase"),
        peak_module=f.get("peak_module", "str", ""),
        peak_op=f.get("peak_op", "str", ""),
        alive_at_peak=tuple(
            _read_tensor(t, i) for i, t in enumerate(f.get("alive_at_peak", "list", []))
        ),
        outside_pytorch={
            str(k): Fields(outside, "profile outside_pytorch", _FIX).get(k, "bytes")
            for k in outside
        },
        plan=f.get("plan", "str", ""),
        step_time_s=f.get("step_time_s", "seconds", None, optional=True),
        warnings=tuple(f.items("warnings", "str")),
        host_bytes={str(k): Fields(host, "profile host_bytes", _FIX).get(k, "bytes") for k in host},
        versions=_strings(f, "versions"),
        target_stack=_strings(f, "target_stack"),
        schema_version=f.get("schema_version", "int"),
    )
    rest = {k: v for k, v in f.data.items() if k not in read}  # fields added since: as written
    return MemoryProfile(**read, **rest)


def _strings(f: Fields, key: str) -> dict[str, str]:
    table = f.get(key, "object", {})
    return {str(k): Fields(table, f"profile {key}", _FIX).get(k, "str") for k in table}


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
