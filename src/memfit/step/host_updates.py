"""The host optimizer's step: each gradient to the host as it completes, the update there,
the new weights back before the forward that uses them (``HostOptimizer``'s half that runs
during backward and the next forward; see ``memfit.step.host_optimizer``)."""

from __future__ import annotations

import functools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memfit.errors import UnsupportedModelError
from memfit.step.host_adam import AdamHyper, HostParam, accumulate_on_host, host_adam_step
from memfit.step.host_worker import HostWorker

__all__ = ["HostUpdates", "HostEntry"]

_GRADS_IN_FLIGHT = 8  # about one transformer layer's weights


@dataclass(eq=False)
class HostEntry:
    name: str
    param: nn.Parameter
    index: int  # forward order: the worker's priority
    host: HostParam
    group: dict[str, Any]
    decoupled: bool
    shape: torch.Size
    ready: threading.Event = field(default_factory=threading.Event)  # new weights queued
    consumed: threading.Event = field(default_factory=threading.Event)  # grad buffer read
    device_ready: Any = None  # CUDA event: the new weights are on the GPU
    waited: bool = True  # a forward waited for the last update
    micro: int = 0  # micro-batches accumulated since the last update


class HostUpdates:
    """The step of ``HostOptimizer`` (a base class: the attributes below are set by
    ``HostOptimizer.__init__`` and ``attach``)."""

    working_dtype: torch.dtype
    final_micro_batch: bool
    forward_wait_s: float
    adam_s: float
    _entries: dict[nn.Parameter, HostEntry]
    _worker: HostWorker | None
    _cuda: bool
    _d2h: Any
    _h2d: Any
    _simulated: bool
    _in_flight: deque[Any]
    _fake_streams: tuple[Any, Any] | None = None

    # --- the step ------------------------------------------------------------------------
    def check(self) -> None:
        """Raise the error a host update raised, if any (the step calls it after each
        backward and after the update)."""
        if self._simulated:  # backward is over: its gradients' copies have run
            self._in_flight.clear()
        if self._worker is not None:
            self._worker.check()

    def _drop_grad(self, param: torch.Tensor) -> None:
        """Simulated (fake tensors): what ``_on_grad`` does to GPU memory.

        The gradient is held until its copy has run: ``_on_grad`` keeps at most
        ``_GRADS_IN_FLIGHT`` copies queued, and autograd's thread runs that far ahead (8
        gradients pending at the allocated peak of the H200 recording of the 3B plan,
        bench/results/snapshots/northstar_b16_one_step_stacks_h200.pickle.gz); those left when
        backward ends are freed then (``check``). The float32 widening is made on the copy
        stream, in its own pool, and freed at once (stream-ordered: the next copy reuses its
        block); the float32 buffer of each update's weights coming back likewise on the other
        side stream (that recording: 96 MiB reserved in each side pool, 28 layers' largest
        weight in float32).
        """
        grad, param.grad = param.grad, None
        if grad is None:
            return
        to_host, to_device = self._side_streams()
        with torch.cpu.stream(to_host):
            wide = grad.reshape(-1).float()
        del wide
        if self.final_micro_batch and param.dtype != torch.float32:
            with torch.cpu.stream(to_device):
                back = torch.empty(param.numel(), dtype=torch.float32, device=param.device)
            del back
        self._in_flight.append(grad)
        if len(self._in_flight) > _GRADS_IN_FLIGHT:
            self._in_flight.popleft()

    def _side_streams(self) -> tuple[Any, Any]:
        """Simulated: the streams standing for the copies' CUDA streams (``CpuStreams``)."""
        if self._fake_streams is None:
            self._fake_streams = (torch.cpu.Stream(), torch.cpu.Stream())
        return self._fake_streams

    def _wait_for(self, entries: list[HostEntry]) -> None:
        for entry in entries:
            if not entry.ready.is_set():
                started = time.perf_counter()
                entry.ready.wait()
                self.forward_wait_s += time.perf_counter() - started
            if entry.device_ready is not None:
                torch.cuda.current_stream().wait_event(entry.device_ready)
                entry.device_ready = None
            entry.waited = True
        self.check()

    def _on_grad(self, param: torch.Tensor) -> None:
        entry = self._entries[param]  # type: ignore[index]
        grad, param.grad = param.grad, None
        if grad is None:
            return
        if not entry.waited:
            raise UnsupportedModelError(
                f"OffloadOptimizer: {entry.name} was used outside the forward of the modules "
                f"that own it, so its update could not be waited for; plan without "
                f"'offload_optimizer' for this model"
            )
        final = self.final_micro_batch
        first = entry.micro == 0
        entry.micro = 0 if final else entry.micro + 1
        entry.consumed.wait()  # the worker has read the previous micro-batch's gradient
        entry.consumed.clear()
        computed = copied = None
        if self._cuda:
            computed = torch.cuda.Event()
            computed.record()
            with torch.cuda.stream(self._d2h):
                self._d2h.wait_event(computed)
                wide = grad.reshape(-1).float()  # on the side stream, freed in its order
                entry.host.grad.copy_(wide, non_blocking=True)
                copied = torch.cuda.Event(blocking=True)  # the worker sleeps, not spins, on it
                copied.record(self._d2h)
            grad.record_stream(self._d2h)
            del wide
            # a gradient freed with its copy still queued holds its memory until the copy
            # runs, and autograd's thread runs ahead of the GPU: keep at most
            # _GRADS_IN_FLIGHT such copies queued (the tracer holds as many)
            self._in_flight.append(copied)
            if len(self._in_flight) > _GRADS_IN_FLIGHT:
                self._in_flight.popleft().synchronize()
        else:
            entry.host.grad.copy_(grad.reshape(-1))
        del grad
        hyper = AdamHyper.from_group(entry.group, entry.decoupled) if final else None
        if final:
            entry.ready.clear()
            entry.waited = False
        assert self._worker is not None
        job = functools.partial(self._host_job, entry, copied, computed, hyper, first)
        ready = copied.query if copied is not None else None  # on the host, not just queued
        self._worker.submit(entry.index, job, ready)

    def _host_job(
        self, entry: HostEntry, copied: Any, computed: Any, hyper: AdamHyper | None, first: bool
    ) -> None:
        try:
            if copied is not None:
                copied.synchronize()
            if hyper is None:  # a micro-batch before the last: accumulate
                accumulate_on_host(entry.host, first)
                return
            started = time.perf_counter()
            host_adam_step(entry.host, hyper, accumulated=not first)
            self.adam_s += time.perf_counter() - started
            self._send_back(entry, computed)
        finally:
            entry.consumed.set()
            if hyper is not None:
                entry.ready.set()

    def _send_back(self, entry: HostEntry, computed: Any) -> None:
        target = entry.param.data.view(-1)
        if not self._cuda:
            target.copy_(entry.host.master)  # rounds to the working dtype, as autocast does
            return
        with torch.cuda.stream(self._h2d):
            self._h2d.wait_event(computed)  # backward is done with the old weights
            if target.dtype == torch.float32:
                target.copy_(entry.host.master, non_blocking=True)
            else:
                wide = torch.empty_like(entry.host.master, device=target.device)
                wide.copy_(entry.host.master, non_blocking=True)
                target.copy_(wide)  # rounded on the GPU, as autocast rounds
                del wide
            done = torch.cuda.Event()
            done.record(self._h2d)
        entry.device_ready = done

    def busy_s(self) -> float:
        """Seconds the worker has spent on host updates since ``attach``."""
        return self._worker.busy_s if self._worker is not None else 0.0

    def synchronize(self) -> None:
        """Wait until every queued host update is done and its weights are on the device."""
        self._in_flight.clear()
        if self._worker is None:
            return
        self._worker.drain()
        if self._cuda:
            self._h2d.synchronize()
