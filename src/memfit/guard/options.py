"""Checked settings of an ``OOMGuard`` (one place for the messages that say the fix)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memfit.errors import InvalidInputError

__all__ = ["GuardOptions"]


def _choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise InvalidInputError(f"{name}={value!r} is not one of {listed}; pick one of those")


def _count(name: str, value: object, low: int, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidInputError(f"{name}={value!r} must be an integer >= {low} ({meaning})")


@dataclass(frozen=True, kw_only=True)
class GuardOptions:
    """The knobs of ``OOMGuard``; see its docstring for their meaning."""

    min_micro_batch_size: int = 1
    grow_after: int = 50
    splitter: Callable[[Any, list[int]], Any] | None = None
    loss_reduction: str = "mean"
    weight_fn: Callable[[Any], Any] | None = None
    snapshot_device: str = "cpu"
    optimizer_copy: str = "none"
    thrash_steps: int = 2
    on_thrash: str = "shrink"
    dump_snapshot_dir: str | None = None
    distributed: bool | str = "auto"

    def __post_init__(self) -> None:
        _count("min_micro_batch_size", self.min_micro_batch_size, 1, "the smallest micro-batch")
        _count("grow_after", self.grow_after, 0, "clean steps before growing back; 0 never grows")
        _count("thrash_steps", self.thrash_steps, 1, "consecutive steps of allocator retries")
        _choice("loss_reduction", self.loss_reduction, ("mean", "sum"))
        _choice("snapshot_device", self.snapshot_device, ("cpu", "device"))
        _choice("optimizer_copy", self.optimizer_copy, ("none", "cpu", "device"))
        _choice("on_thrash", self.on_thrash, ("shrink", "warn", "ignore"))
        _choice("distributed", self.distributed, ("auto", True, False))
        for name in ("splitter", "weight_fn"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidInputError(
                    f"{name}={value!r} is not callable; pass a function or leave it None"
                )
        if self.weight_fn is not None and self.loss_reduction == "sum":
            warnings.warn(
                "weight_fn has no effect with loss_reduction='sum' (every micro-batch loss is "
                "added with weight 1); drop weight_fn or use loss_reduction='mean'",
                stacklevel=3,
            )
