"""Read the figures out of an out-of-memory message, for reports only.

The guard decides *whether* an error is an out-of-memory error by its type
(``torch.OutOfMemoryError``), never by its text. The text is parsed here only to tell the user
how much was asked for and how much was free. Every field is optional: the formats differ by
backend and PyTorch version, and a message that matches nothing still gives an ``OOMInfo`` with
the raw text.

Formats read (PyTorch's ``c10/cuda/CUDACachingAllocator.cpp``,
``c10/cuda/CUDAMallocAsyncAllocator.cpp`` and ``aten/src/ATen/mps/MPSAllocator.mm`` across
releases):

- CUDA, PyTorch >= 2.2: ``CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total
  capacity of 10.56 GiB of which 3.49 GiB is free. ... this process has 7.06 GiB memory in use.
  Of the allocated memory 6.78 GiB is allocated by PyTorch, [with X allocated in private pools
  (e.g., CUDA Graphs),] and 97.98 MiB is reserved by PyTorch but unallocated.``
- CUDA, PyTorch 2.1: the same with the typo ``total capacty``.
- CUDA, PyTorch <= 2.0: ``Tried to allocate 20.00 MiB (GPU 0; 10.92 GiB total capacity;
  8.57 MiB already allocated; 9.28 GiB free; 4.68 MiB reserved in total by PyTorch)``
  (``cached`` instead of ``reserved in total by PyTorch`` before 1.5).
- ROCm: as CUDA with ``HIP out of memory``.
- ``cudaMallocAsync`` backend: ``Allocation on device 0 would exceed allowed memory. ...
  Currently allocated : 9.79 GiB / Requested : 1.00 GiB / Device limit : 10.00 GiB /
  Free (according to CUDA): 0 bytes``.
- MPS: ``MPS backend out of memory (MPS allocated: 18.13 GB, other allocations: 1.25 GB, max
  allowed: 20.40 GB). Tried to allocate 1.02 GB on private pool.``
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from memfit.units import format_bytes

__all__ = ["OOMInfo", "parse_oom_message"]

# PyTorch formats sizes with binary divisors everywhere, whatever the label ("GB" on MPS).
_SCALE = {"b": 1, "bytes": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
_SIZE = r"(\d+(?:\.\d+)?)\s*(bytes|[KMGT]i?B|B)"


@dataclass(frozen=True, slots=True)
class OOMInfo:
    """Figures of one out-of-memory error; None where the message did not say.

    Attributes:
        backend: "cuda", "hip", "cuda-async" (``cudaMallocAsync``), "mps" or "unknown".
        device_index: the GPU the allocation was for.
        requested_bytes: the allocation that failed.
        total_bytes: the device's capacity (or the allowed maximum on MPS and cudaMallocAsync).
        free_bytes: free device memory as the driver saw it.
        process_bytes: memory this process had in use, including non-PyTorch memory.
        allocated_bytes: memory PyTorch had handed out to tensors.
        reserved_unallocated_bytes: memory PyTorch held in its cache but had not handed out.
        reserved_bytes: total memory PyTorch held (only the old format says this directly).
        message: the message as raised.
    """

    backend: str
    device_index: int | None
    requested_bytes: int | None
    total_bytes: int | None
    free_bytes: int | None
    process_bytes: int | None
    allocated_bytes: int | None
    reserved_unallocated_bytes: int | None
    reserved_bytes: int | None
    message: str

    def summary(self) -> str:
        """One clause for a log line: ``tried 4.00 GiB, 3.49 GiB free of 10.56 GiB``."""
        parts = []
        if self.requested_bytes is not None:
            parts.append(f"tried {format_bytes(self.requested_bytes)}")
        if self.free_bytes is not None:
            total = f" of {format_bytes(self.total_bytes)}" if self.total_bytes is not None else ""
            parts.append(f"{format_bytes(self.free_bytes)} free{total}")
        if self.allocated_bytes is not None:
            parts.append(f"{format_bytes(self.allocated_bytes)} allocated by PyTorch")
        if self.reserved_unallocated_bytes is not None:
            parts.append(f"{format_bytes(self.reserved_unallocated_bytes)} cached but unused")
        return ", ".join(parts) if parts else "no figures in the message"

    def to_dict(self) -> dict[str, object]:
        """Plain data for metrics and JSON (the message is cut to its first 300 characters)."""
        data = asdict(self)
        data["message"] = self.message[:300]
        return data


def _bytes(number: str, unit: str) -> int:
    return int(float(number) * _SCALE[unit.lower().replace("i", "")])


def _find(patterns: tuple[str, ...], text: str) -> int | None:
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE | re.DOTALL)
        if match:
            return _bytes(match.group(1), match.group(2))
    return None


def _backend(text: str) -> str:
    lowered = text.lower()
    if "would exceed allowed memory" in lowered:
        return "cuda-async"
    if "hip out of memory" in lowered:
        return "hip"
    if "mps backend out of memory" in lowered:
        return "mps"
    if "cuda out of memory" in lowered:
        return "cuda"
    return "unknown"


def parse_oom_message(message: str) -> OOMInfo:
    """Parse the figures out of an out-of-memory message (see the module docstring).

    Args:
        message: ``str(error)`` of a ``torch.OutOfMemoryError`` (or of MPS's ``RuntimeError``).

    Returns:
        The figures that could be read; the others are None. Never raises.
    """
    text = " ".join(message.split())  # the async backend spreads its figures over lines
    device = re.search(r"(?:GPU|device)\s+(\d+)", text)
    return OOMInfo(
        backend=_backend(text),
        device_index=int(device.group(1)) if device else None,
        requested_bytes=_find(
            (rf"Tried to allocate {_SIZE}", rf"Requested\s*:\s*{_SIZE}"),
            text,
        ),
        total_bytes=_find(
            (
                rf"total capac(?:i)?ty of {_SIZE}",
                rf"{_SIZE} total capacity",
                rf"Device limit\s*:\s*{_SIZE}",
                rf"max allowed:\s*{_SIZE}",
            ),
            text,
        ),
        free_bytes=_find(
            (
                rf"of which {_SIZE} is free",
                rf"{_SIZE} free;",
                rf"Free \(according to CUDA\)\s*:\s*{_SIZE}",
            ),
            text,
        ),
        process_bytes=_find((rf"this process has {_SIZE} memory in use",), text),
        allocated_bytes=_find(
            (
                rf"Of the allocated memory {_SIZE} is allocated by PyTorch",
                rf"{_SIZE} already allocated",
                rf"Currently allocated\s*:\s*{_SIZE}",
                rf"MPS allocated:\s*{_SIZE}",
            ),
            text,
        ),
        reserved_unallocated_bytes=_find(
            (rf"and {_SIZE} is reserved by PyTorch but unallocated",), text
        ),
        reserved_bytes=_find(
            (rf"{_SIZE} reserved in total by PyTorch", rf"{_SIZE} cached\)"),
            text,
        ),
        message=message,
    )
