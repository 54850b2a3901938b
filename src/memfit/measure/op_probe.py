"""Per-operator memory on a real GPU: what each kernel holds beyond its outputs.

``OpProbe`` resets the allocator's peak before every ATen operator and reads it after, so that
for each operator it knows the allocated bytes before, after, and at the highest point inside it.
Scratch memory that kernels allocate internally (cuDNN workspaces, attention accumulators, cuBLAS
workspaces the first time) shows up as ``peak - after`` or as growth not explained by the outputs.
It resets the peak counters, so it runs in a step of its own, after the measured ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["OpCost", "OpProbe"]


@dataclass(frozen=True, slots=True)
class OpCost:
    """One operator call: allocated bytes before, after, at its peak, and its new outputs."""

    phase: str
    op: str
    before: int
    after: int
    peak: int
    output_bytes: int

    @property
    def scratch(self) -> int:
        """Bytes used inside the operator and released before it returned."""
        return self.peak - self.after

    @property
    def hidden(self) -> int:
        """Bytes the operator kept that no output accounts for (e.g. a library workspace)."""
        return self.after - self.before - self.output_bytes


class OpProbe(TorchDispatchMode):
    """Record an ``OpCost`` per operator call on CUDA tensors.

    Args:
        phase: returns the current phase name (forward, backward, optimizer) for labelling.
    """

    def __init__(self, phase: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.phase = phase
        self.costs: list[OpCost] = []

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        seen = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, torch.Tensor) and t.is_cuda
        }
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = func(*args, **(kwargs or {}))
        peak = torch.cuda.max_memory_allocated()
        after = torch.cuda.memory_allocated()
        output_bytes = 0
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
                storage = tensor.untyped_storage()
                if storage._cdata not in seen:
                    seen.add(storage._cdata)
                    output_bytes += -(-storage.nbytes() // 512) * 512
        name = func.__name__.removesuffix(".default")
        self.costs.append(OpCost(self.phase(), name, before, after, peak, output_bytes))
        return out
