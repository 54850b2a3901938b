"""ActivationOffloader: tensors saved for backward kept in pinned host memory, prefetched back.

Installed as ``saved_tensors_hooks`` around chosen modules' forwards. Around a checkpointed
module the hooks see only what the checkpoint keeps, its inputs (PyTorch's non-reentrant
checkpoint saves them with ``save_for_backward`` before entering its own hooks), so what goes
to the host is the checkpoint boundaries. Each saved tensor of at least ``min_bytes`` that owns
its whole storage is copied to a pinned host buffer on a side stream, and the GPU copy is
released as soon as that copy is done (``record_stream``). In backward, when the gradient of
module ``i``'s output arrives, the tensors of modules ``i`` .. ``i - ahead`` are copied back on
the side stream, so that each is on the GPU before its recomputation needs it; the compute
stream waits for a tensor's copy only where it uses it. Copies are bitwise: gradients are
identical.

Pinned buffers are page-locked in place (``cudaHostRegister``, exact sizes: ``step.pinned``),
reused from step to step, and unlocked on undo or when the offloader is dropped. On fake
tensors (memfit's tracer) the same hooks release the saved tensors in forward and allocate them
again at the prefetch in backward, and count the host bytes instead of allocating them.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from memfit.step.overhead import note
from memfit.step.pinned import PinnedHost

__all__ = ["ActivationOffloader"]

_LAG = 2  # modules whose copies to the host may still be queued when the next one starts
# forward's waits for copies spin: sleeping (cudaEventBlockingSync) cost ResNet-50's step with 8
# offloaded boundaries 94.5 ms against 85.3 spinning and 84.6 without offloading (H100,
# bench/results/offload_host_probe_h100.json): each wake-up left the GPU idle
_SLEEP_WHILE_WAITING = False


class _HostPool:
    """Host buffers by size, reused across steps; page-locked when they serve a GPU."""

    def __init__(self) -> None:
        self._free: dict[int, list[torch.Tensor]] = defaultdict(list)
        self.pinned = PinnedHost()

    def take(self, nbytes: int, pin: bool) -> torch.Tensor:
        if self._free[nbytes]:
            return self._free[nbytes].pop()
        buffer = torch.empty(nbytes, dtype=torch.uint8)
        if pin:
            self.pinned.pin(buffer)
        return buffer

    def give(self, buffer: torch.Tensor) -> None:
        self._free[buffer.numel()].append(buffer)

    def close(self) -> None:
        self.pinned.release()
        self._free.clear()


class _Saved:
    """One saved tensor in host memory: on a GPU copied on the side stream, on a CPU copied
    (tests), on fake tensors only its metadata (the tracer)."""

    def __init__(self, offloader: ActivationOffloader, tensor: torch.Tensor) -> None:
        self.offloader = offloader
        self.shape, self.stride = tuple(tensor.shape), tuple(tensor.stride())
        self.dtype, self.device = tensor.dtype, tensor.device
        self.nbytes = tensor.untyped_storage().nbytes()
        self.uses = 1  # packs not yet unpacked
        self.device_copy: torch.Tensor | None = None
        self.ready: Any = None
        self.host: torch.Tensor | None = None
        self.fake = is_fake(tensor)
        self.stored: Any = None  # CUDA event: the copy to the host is done
        self.held: torch.Tensor | None = None  # fake: the tensor, alive while "in flight"
        if self.fake:
            self.held = tensor
            return
        self.host = offloader.pool.take(self.nbytes, pin=tensor.is_cuda)
        if not tensor.is_cuda:
            self.host.copy_(_bytes_of(tensor))
            return
        stream = offloader.stream_for(tensor.device)
        stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(stream):
            self.host.copy_(_bytes_of(tensor), non_blocking=True)
            self.stored = torch.cuda.Event(blocking=_SLEEP_WHILE_WAITING)
            self.stored.record(stream)
        tensor.record_stream(stream)

    def settle(self) -> None:
        """Wait until the copy to the host is done: the GPU memory it read is free again."""
        if self.stored is not None:
            self.stored.synchronize()
            self.stored = None
        self.held = None

    def load(self) -> None:
        """Start the copy back (on the side stream); idempotent."""
        if self.device_copy is not None:
            return
        self.device_copy = torch.empty_strided(
            self.shape, self.stride, dtype=self.dtype, device=self.device
        )
        if self.fake:
            return
        assert self.host is not None
        if self.device.type != "cuda":
            _bytes_of(self.device_copy).copy_(self.host)
            return
        stream = self.offloader.stream_for(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            _bytes_of(self.device_copy).copy_(self.host, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(stream)

    def get(self) -> torch.Tensor:
        self.load()
        tensor = self.device_copy
        assert tensor is not None
        if self.ready is not None:
            torch.cuda.current_stream(tensor.device).wait_event(self.ready)
        self.uses -= 1
        if self.uses == 0:  # autograd holds it from here; the host buffer is free again
            self.device_copy = None
            self.offloader.release(self)
        return tensor


class _Reshaped:
    """A second pack of a saved storage under another shape: one host copy, two shapes."""

    def __init__(self, saved: _Saved, shape: torch.Size) -> None:
        self.saved, self.shape = saved, shape

    def get(self) -> torch.Tensor:
        return self.saved.get().view(self.shape)


def _bytes_of(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=tensor.device).set_(tensor.untyped_storage())


class ActivationOffloader:
    """Saved-tensor hooks that keep a group of modules' saved tensors in host memory.

    Args:
        ahead: modules prefetched beyond the one backward reached.
        min_bytes: smaller saved tensors stay on the GPU.

    Known limitations:
        Only tensors that own their whole storage (not views into a larger one) are moved;
        the others stay on the GPU. A module's forward waits on the CPU until the copies of
        the module ``_LAG`` (2) before it are done, so that the GPU holds at most that many
        inputs being copied (the CPU would otherwise run ahead and the GPU hold them all).
        The modules' outputs must carry gradients (backward's progress is read from them).
    """

    def __init__(self, *, ahead: int = 2, min_bytes: int = 1 << 20) -> None:
        self.ahead, self.min_bytes = ahead, min_bytes
        self._in_flight: deque[tuple[int, list[_Saved]]] = deque()
        self.pool = _HostPool()
        self.groups: dict[int, list[_Saved]] = defaultdict(list)
        self.current: int | None = None
        self._seen: dict[int, tuple[torch.Tensor, _Saved]] = {}
        self._streams: dict[torch.device, Any] = {}
        self.host_now = 0
        self.host_peak = 0

    def stream_for(self, device: torch.device) -> Any:
        """The side stream of ``device`` (created on first use)."""
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    # --- forward -------------------------------------------------------------------------
    def enter(self, index: int) -> None:
        # the modules LAG before this one have their copies done: autograd's thread runs ahead
        # of the GPU, and a tensor freed with a copy still queued (record_stream) holds its
        # memory until the copy runs, so without a bound the GPU held as many boundaries as
        # the CPU was ahead (the tracer holds the same LAG: the prediction matches)
        while self._in_flight and self._in_flight[0][0] <= index - _LAG:
            for saved in self._in_flight.popleft()[1]:
                saved.settle()
        self.current = index
        self._seen.clear()

    def leave(self, output: Any, index: int) -> None:
        moved = [saved for _, saved in self._seen.values()]
        if moved:
            self._in_flight.append((index, moved))
        self.current = None
        self._seen.clear()
        tensor = _first_tensor(output)
        if tensor is not None and tensor.requires_grad:
            tensor.register_hook(lambda grad, i=index: self.reached(i))

    def pack(self, tensor: torch.Tensor) -> Any:
        if self.current is None or not self._movable(tensor):
            return tensor
        # the same storage saved twice in one module's forward: one copy (the tensor is held
        # until the module returns, so that its storage's address is not reused meanwhile)
        key = tensor.untyped_storage()._cdata
        seen = self._seen.get(key)
        if (
            seen is not None
            and seen[0]._version == tensor._version
            and seen[0].dtype == tensor.dtype
        ):
            seen[1].uses += 1
            # the storage saved again under another shape (both whole and contiguous: a
            # reshape; on PyTorch 2.6 a LLaMA block's backward got a 2-D one for a batched product)
            return seen[1] if seen[0].shape == tensor.shape else _Reshaped(seen[1], tensor.shape)
        saved = _Saved(self, tensor)
        note("offload_tensor")  # the step-time model's price of moving it (host time)
        self._seen[key] = (tensor, saved)
        self.groups[self.current].append(saved)
        self.host_now += saved.nbytes
        self.host_peak = max(self.host_peak, self.host_now)
        return saved

    def _movable(self, tensor: torch.Tensor) -> bool:
        if isinstance(tensor, nn.Parameter) or not tensor.is_floating_point():
            return False
        storage = tensor.untyped_storage()
        if storage.nbytes() < self.min_bytes or tensor.storage_offset() != 0:
            return False
        whole = tensor.numel() * tensor.element_size() == storage.nbytes()
        return whole and tensor.is_contiguous()

    # --- backward ------------------------------------------------------------------------
    @staticmethod
    def unpack(packed: Any) -> torch.Tensor:
        return packed.get() if isinstance(packed, (_Saved, _Reshaped)) else packed

    def reached(self, index: int) -> None:
        """Backward has reached module ``index``: copy it and the next ``ahead`` back."""
        while self._in_flight:  # forward is over: its copies are done before any comes back
            for saved in self._in_flight.popleft()[1]:
                saved.settle()
        for group in range(index, index - 1 - self.ahead, -1):
            for saved in self.groups.get(group, ()):
                saved.load()

    def release(self, saved: _Saved) -> None:
        self.host_now -= saved.nbytes
        if saved.host is not None:
            self.pool.give(saved.host)
            saved.host = None
        for group, items in list(self.groups.items()):
            if saved in items:
                items.remove(saved)
                if not items:
                    del self.groups[group]

    def close(self) -> None:
        """Drop what is held and unlock the host buffers (after the side streams' copies)."""
        for stream in self._streams.values():
            stream.synchronize()
        self._in_flight.clear()
        self.groups.clear()
        self.pool.close()


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return next((x for x in output if isinstance(x, torch.Tensor)), None)
    for value in getattr(output, "values", lambda: ())():
        if isinstance(value, torch.Tensor):
            return value
    return None
