"""A CPU stand-in for ``torch.cuda.memory._record_memory_history``: the order of storages made
and freed by a real training loop on the CPU, as a snapshot's ``device_traces`` (sizes,
addresses, ``alloc``/``free_completed``; no stacks, no segments).

PyTorch makes and frees the same tensors in the same order on the CPU as on a GPU (the
optimizers' foreach code, autograd's gradients, Hugging Face's modules); what differs is the
allocator (no caching, no 512-byte blocks: the replay rounds sizes) and what libraries add on
a GPU (cuBLAS workspaces).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class StorageRecorder(TorchDispatchMode):
    """Notes every new CPU storage an operator returns, and its release."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self._live: dict[int, int] = {}

    def note(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        ptr, size = storage.data_ptr(), storage.nbytes()
        if ptr == 0 or size == 0 or ptr in self._live:
            return
        self._live[ptr] = size
        self.events.append({"action": "alloc", "addr": ptr, "size": size})
        weakref.finalize(storage, self._freed, ptr, size)

    def _freed(self, ptr: int, size: int) -> None:
        if self._live.pop(ptr, None) is not None:
            self.events.append({"action": "free_completed", "addr": ptr, "size": size})

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.device.type == "cpu":
                self.note(value)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"segments": [], "device_traces": [list(self.events)]}
