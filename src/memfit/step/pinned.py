"""Host tensors page-locked in place, and unlocked before their memory can be freed.

``cudaHostRegister`` page-locks an existing allocation at its exact size (PyTorch's pinned
allocator rounds sizes up to a power of two, up to twice the host memory). A registered range
must be unregistered before its memory goes back to the C library: the driver keeps a freed
range registered, and once the addresses are reused its mappings collide. On the H200 a
second plan applied in one process failed that way at its first CUDA allocation ("resource
already mapped", ``cudaErrorAlreadyMapped``), and every CUDA call after it too: the first
plan's offloaded activation buffers had been freed with the model while still registered. So
every registration here is tied to its tensor by a finalizer that unregisters it when the
tensor is collected, and ``release`` unregisters explicitly (undo).

A CUDA runtime call that fails leaves the thread's last error set, which PyTorch raises at its
next kernel launch, anywhere; a failed registration is therefore cleared at once, and the
buffer stays pageable (copies from it are synchronous, and still correct).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

__all__ = ["PinnedHost"]


def _cudart() -> Any:
    return torch.cuda.cudart()


def _clear_last_error() -> None:
    """Read (and so reset) the CUDA runtime's last error in this thread: PyTorch checks it after
    every kernel launch, so a one-element launch raises it here, where it is expected."""
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError:  # torch.AcceleratorError: the error being cleared
        pass


def _unregister(pointer: int) -> None:
    if int(_cudart().cudaHostUnregister(pointer)) != 0:
        _clear_last_error()


class PinnedHost:
    """The host tensors one owner (an offloader, a host optimizer) page-locked.

    Known limitations:
        A tensor is unregistered when its Python object is collected, even if views of it
        live on; they keep the memory, pageable from then on (copies stay correct).
    """

    def __init__(self) -> None:
        self._finalizers: list[weakref.finalize] = []

    def pin(self, tensor: torch.Tensor) -> bool:
        """Page-lock ``tensor``'s memory in place; False when the driver refused (the tensor
        then stays pageable)."""
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes == 0:
            return False
        pointer = tensor.data_ptr()
        if int(_cudart().cudaHostRegister(pointer, nbytes, 0)) != 0:
            _clear_last_error()
            return False
        finalizer = weakref.finalize(tensor, _unregister, pointer)
        finalizer.atexit = False  # at interpreter exit the process's memory goes anyway
        self._finalizers.append(finalizer)
        return True

    @property
    def count(self) -> int:
        """How many tensors are registered now."""
        return sum(1 for f in self._finalizers if f.alive)

    def release(self) -> None:
        """Unregister every tensor still registered (the caller has synchronized the copies
        that read or write them)."""
        for finalizer in self._finalizers:
            finalizer()
        self._finalizers.clear()
