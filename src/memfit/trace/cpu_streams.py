"""Which stream the fake CPU device is on: the recorder's stand-in for CUDA streams."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["CpuStreams"]


class CpuStreams:
    """Small integer ids of the ``torch.cpu.Stream`` current now (0: the default stream).

    On the fake CPU device a ``torch.cpu.Stream`` stands for a CUDA stream: FSDP2 makes its
    own current for its collectives, and a technique's simulation does for its side streams
    (``memfit.step.host_updates``); the caching allocator keeps a pool per stream.
    """

    def __init__(self) -> None:
        self._default = torch.cpu.current_stream()
        self._ids: dict[int, int] = {id(self._default): 0}
        self._keep: list[Any] = [self._default]  # ids of live objects stay unique

    def __call__(self) -> int:
        stream = torch.cpu.current_stream()
        key = id(stream)
        if key not in self._ids:
            self._ids[key] = len(self._ids)
            self._keep.append(stream)
        return self._ids[key]
