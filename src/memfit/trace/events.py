"""The recorded step: its allocations and the order they are made and freed in.

``MemoryRecorder`` (``memfit.trace.recorder``) writes a ``Trace``; the allocator simulation
(``memfit.trace.replay``), the profile (``memfit.trace.assemble``), sharding and scaling read
it. A storage is recorded by the tensor that holds it (``local_tensor``: a DTensor's shard).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from memfit.profile import Category, Phase

__all__ = ["Allocation", "Trace", "live_until", "local_tensor", "local_tensor_or_value"]


@dataclass(slots=True)
class Allocation:
    """One storage (or hidden workspace) and its life in the event sequence."""

    key: int
    size: int
    category: Category
    phase: Phase
    module: str
    op: str
    shape: tuple[int, ...] = ()
    dtype: str = ""
    stream: int = 0
    host: bool = False  # lives in host memory on the real device: not GPU memory


@dataclass
class Trace:
    """Every allocation of a traced step, and the order of allocations and frees."""

    allocations: dict[int, Allocation] = field(default_factory=dict)
    # +key for an allocation, -key for a free (keys start at 1)
    events: list[int] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)  # phase of each event


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor that holds memory for ``tensor``: a DTensor's local shard, else itself."""
    if hasattr(type(tensor), "_local_tensor"):  # a DTensor (checked without importing it)
        return tensor._local_tensor  # type: ignore[attr-defined]
    return tensor


def local_tensor_or_value(value: Any) -> Any:
    return local_tensor(value) if isinstance(value, torch.Tensor) else value


def live_until(events: list[int], stop: int) -> set[int]:
    """The keys of the allocations alive after the first ``stop`` events."""
    live: set[int] = set()
    for key in events[:stop]:
        if key > 0:
            live.add(key)
        else:
            live.discard(-key)
    return live
