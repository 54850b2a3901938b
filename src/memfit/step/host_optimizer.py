"""HostOptimizer: Adam/AdamW's float32 masters and state in host memory, the step overlapped.

The GPU keeps each offloaded weight in the working dtype only (bfloat16 under bf16 autocast: the
copy autocast would have made for the matrix product), so weights cost 2 bytes per parameter on
the GPU instead of 4 + 4 (gradient) + 8 (Adam's moments). During backward, as soon as a
weight's gradient is complete (``register_post_accumulate_grad_hook``), it is copied to pinned
host memory on a side stream and its GPU memory released; a worker thread widens it to float32
and runs PyTorch's fused CPU Adam/AdamW on the float32 master, rounds the new master to the
working dtype and copies it back to the GPU on a second side stream. A forward pre-hook on each
module that owns an offloaded weight makes the compute stream wait for that copy, so the next
forward starts as soon as its first layer is updated (the worker runs earliest deadline first,
``host_worker``), and the host step overlaps the rest of backward and the next forward.

Why this is the standard step's math: under bf16 autocast a Linear multiplies ``bf16(W)``; the
float32 gradient of ``W`` is the bfloat16 gradient of ``bf16(W)`` widened (``ToCopyBackward``),
so keeping ``bf16(W)`` as the leaf gives the same gradient, and the host applies the same
Adam/AdamW update to the same float32 ``W`` (PyTorch's CPU kernel instead of the CUDA one: equal
to rounding). Micro-batches' gradients add up in float32 on the host, as in ``W.grad``.

The user's optimizer keeps every other parameter (embeddings, norms) and steps them on the GPU
as before: an offloaded parameter's ``.grad`` is always None when it steps, so it skips them.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.host_adam import (
    DEFAULT_CHUNK,
    AdamHyper,
    HostParam,
    accumulate_on_host,
    host_adam_step,
)
from memfit.step.host_worker import HostWorker

__all__ = [
    "HostOptimizer",
    "offloadable_parameters",
    "host_bytes_per_parameter",
    "check_host_optimizer",
]


def check_host_optimizer(optimizer: object) -> None:
    """Raise unless the host can run ``optimizer``'s update (nothing is changed).

    Raises:
        InvalidInputError: not ``torch.optim.Adam``/``AdamW``, or a group with amsgrad or
            differentiable set.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        raise InvalidInputError(
            f"OffloadOptimizer runs torch.optim.Adam and AdamW on the host, not a "
            f"{type(optimizer).__name__}; use one of those or plan without 'offload_optimizer'"
        )
    assert isinstance(optimizer, torch.optim.Optimizer)
    for group in optimizer.param_groups:
        AdamHyper.from_group(group, decoupled=True)


def host_bytes_per_parameter(working_itemsize: int, micro_batches: int) -> int:
    """Host bytes per offloaded parameter: float32 master, exp_avg, exp_avg_sq, the staging
    buffer in the working dtype, and a float32 sum when micro-batches accumulate."""
    return 3 * 4 + working_itemsize + (4 if micro_batches > 1 else 0)


def offloadable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, list[nn.Module]]]:
    """The parameters the host optimizer can take: float32, trained, owned by ``nn.Linear``
    modules only (a weight shared with an embedding is used outside autocast's cast).

    Returns:
        ``(name, parameter, owning modules)`` in the model's order (its forward order for
        the usual layouts).
    """
    owners: dict[nn.Parameter, list[nn.Module]] = {}
    names: dict[nn.Parameter, str] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, param in module._parameters.items():
            if param is None:
                continue
            owners.setdefault(param, []).append(module)
            names.setdefault(param, f"{module_name}.{local}" if module_name else local)
    return [
        (names[p], p, mods)
        for p, mods in owners.items()
        if p.requires_grad
        and p.dtype == torch.float32
        and all(isinstance(m, nn.Linear) for m in mods)
    ]


@dataclass(eq=False)
class _Entry:
    name: str
    param: nn.Parameter
    index: int  # forward order: the worker's priority
    host: HostParam
    group: dict[str, Any]
    decoupled: bool
    shape: torch.Size
    ready: threading.Event = field(default_factory=threading.Event)  # new weights queued
    consumed: threading.Event = field(default_factory=threading.Event)  # staging read
    device_ready: Any = None  # CUDA event: the new weights are on the GPU
    waited: bool = True  # a forward waited for the last update
    micro: int = 0  # micro-batches accumulated since the last update


class HostOptimizer:
    """Run ``optimizer``'s update of ``params`` on the host, overlapped with backward.

    Args:
        model: the model (its modules get the forward pre-hooks).
        optimizer: a ``torch.optim.Adam`` or ``AdamW`` that holds ``params``.
        params: the parameters to offload (``offloadable_parameters``), in forward order.
        working_dtype: the dtype the GPU keeps (``torch.bfloat16`` under bf16 autocast,
            ``torch.float32`` without autocast).
        threads: the worker's CPU threads; default: all cores but one (the main thread
            launches the GPU's kernels).
        chunk: elements per chunk of the host step.

    ``attach()`` moves the masters and any existing optimizer state to the host and installs
    the hooks; ``detach()`` puts everything back. ``final_micro_batch`` tells the gradient hooks
    whether this backward ends the step (set by ``TrainStep`` when it splits a batch).

    On fake tensors (memfit's tracer) it changes what the GPU holds in the same way, the
    working copies and each gradient released once copied (one kept in flight), and allocates
    nothing on the host: ``host_bytes()`` gives what it would hold there.

    Known limitations:
        An offloaded weight must be used only inside the forward of the modules that own it
        (a use elsewhere would read weights still being updated; detected, it raises). While
        attached, ``model.state_dict()`` holds the working copies; the float32 masters are in
        ``master_state_dict()``. No gradient clipping by global norm (the update starts
        before backward ends), no fp16 loss scaling, no amsgrad; one CUDA device.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: Iterable[tuple[str, nn.Parameter]],
        *,
        working_dtype: torch.dtype = torch.bfloat16,
        threads: int | None = None,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        self._model = weakref.ref(model)  # the undo registry must not keep the model alive
        self.optimizer = optimizer
        self.working_dtype = working_dtype
        self.threads = threads if threads is not None else max(1, (os.cpu_count() or 2) - 1)
        self.chunk = chunk
        self.final_micro_batch = True
        self._params = list(params)
        self._entries: dict[nn.Parameter, _Entry] = {}
        self._handles: list[Any] = []
        self._flat: dict[str, torch.Tensor] = {}
        self._saved_state: dict[nn.Parameter, dict[str, Any]] = {}
        self._worker: HostWorker | None = None
        self._registered: list[torch.Tensor] = []
        self._attached = False
        self._simulated = any(is_fake(p) for _, p in self._params)
        self._in_flight: torch.Tensor | None = None  # simulated: the gradient being copied
        self._check(optimizer)

    # --- setup ---------------------------------------------------------------------------
    def _check(self, optimizer: torch.optim.Optimizer) -> None:
        check_host_optimizer(optimizer)
        group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
        for name, param in self._params:
            if param not in group_of:
                raise InvalidInputError(
                    f"OffloadOptimizer: parameter {name} is not in the optimizer; give the "
                    f"optimizer all the model's trained parameters"
                )
        devices = {p.device for _, p in self._params}
        if len(devices) > 1:
            raise InvalidInputError(
                f"OffloadOptimizer: the offloaded parameters are on {sorted(map(str, devices))}; "
                f"one device only"
            )

    def _group_decoupled(self, group: dict[str, Any]) -> bool:
        return isinstance(self.optimizer, torch.optim.AdamW) or bool(
            group.get("decoupled_weight_decay", False)
        )

    def host_bytes(self, micro_batches: int = 1) -> dict[str, int]:
        """Host memory this optimizer holds, by part (exact: flat tensors, no rounding)."""
        numel = sum(p.numel() for _, p in self._params)
        item = torch.empty((), dtype=self.working_dtype).element_size()
        parts = {
            "master weights": 4 * numel,
            "optimizer state": 8 * numel,
            "gradient staging": item * numel,
            "scratch": 4 * min(self.chunk, numel) if numel else 0,
        }
        if micro_batches > 1:
            parts["gradient accumulation"] = 4 * numel
        return parts

    def attach(self) -> None:
        """Move masters and state to the host, shrink the GPU weights, install the hooks."""
        params = [p for _, p in self._params]
        if not params or self._attached:
            return
        self._attached = True
        if self._simulated:
            self._attach_simulated(params)
            return
        device = params[0].device
        self._cuda = device.type == "cuda"
        total = sum(p.numel() for p in params)
        self._flat = {
            "master": torch.empty(total, dtype=torch.float32),
            "exp_avg": torch.zeros(total, dtype=torch.float32),
            "exp_avg_sq": torch.zeros(total, dtype=torch.float32),
            "staging": torch.empty(total, dtype=self.working_dtype),
        }
        self._pin(self._flat["staging"])
        self._scratch = torch.empty(min(self.chunk, total), dtype=torch.float32)
        group_of = {p: g for g in self.optimizer.param_groups for p in g["params"]}
        offset = 0
        for index, (name, param) in enumerate(self._params):
            n = param.numel()
            views = {k: v[offset : offset + n] for k, v in self._flat.items()}
            offset += n
            views["master"].copy_(param.detach().reshape(-1))
            host = HostParam(
                views["master"],
                views["exp_avg"],
                views["exp_avg_sq"],
                torch.zeros((), dtype=torch.float32),
                views["staging"],
            )
            self._take_state(param, host)
            group = group_of[param]
            decoupled = self._group_decoupled(group)
            entry = _Entry(name, param, index, host, group, decoupled, param.shape)
            entry.ready.set()
            entry.consumed.set()
            self._entries[param] = entry
        if self._cuda:
            self._d2h = torch.cuda.Stream(device)
            self._h2d = torch.cuda.Stream(device)
        for param in params:
            param.data = param.data.to(self.working_dtype)
            self._handles.append(
                param.register_post_accumulate_grad_hook(functools.partial(self._on_grad))
            )
        self._install_waits()
        self._worker = HostWorker(self.threads)

    def _attach_simulated(self, params: list[nn.Parameter]) -> None:
        for param in params:
            param.data = param.data.to(self.working_dtype)
            self._handles.append(param.register_post_accumulate_grad_hook(self._drop_grad))

    def _drop_grad(self, param: torch.Tensor) -> None:
        """Simulated: the gradient leaves the GPU once the next one is complete."""
        self._in_flight, param.grad = param.grad, None

    def _pin(self, tensor: torch.Tensor) -> None:
        """Page-lock ``tensor`` in place (exact size; PyTorch's pinned allocator rounds sizes
        up to powers of two)."""
        if not torch.cuda.is_available() or tensor.numel() == 0:
            return
        nbytes = tensor.numel() * tensor.element_size()
        code = torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), nbytes, 0)
        if int(code) == 0:
            self._registered.append(tensor)

    def _take_state(self, param: nn.Parameter, host: HostParam) -> None:
        state = self.optimizer.state.get(param)
        if not state:
            return
        self._saved_state[param] = {k: v for k, v in state.items()}
        if "exp_avg" in state:
            host.exp_avg.copy_(state["exp_avg"].detach().reshape(-1))
            host.exp_avg_sq.copy_(state["exp_avg_sq"].detach().reshape(-1))
        step = state.get("step")
        if step is not None:
            host.step.fill_(float(step))
        del self.optimizer.state[param]

    def _install_waits(self) -> None:
        modules: dict[nn.Module, list[_Entry]] = {}
        model = self._model()
        assert model is not None
        for module in model.modules():
            owned = [self._entries[p] for p in module._parameters.values() if p in self._entries]
            if owned:
                modules[module] = owned
        for module, entries in modules.items():
            hook = functools.partial(self._wait_for, entries)
            self._handles.append(module.register_forward_pre_hook(lambda m, a, h=hook: h()))

    # --- the step ------------------------------------------------------------------------
    def check(self) -> None:
        """Raise the error a host update raised, if any (the step calls it once per step)."""
        if self._worker is not None:
            self._worker.check()

    def _wait_for(self, entries: list[_Entry]) -> None:
        for entry in entries:
            if not entry.ready.is_set():
                entry.ready.wait()
            if entry.device_ready is not None:
                torch.cuda.current_stream().wait_event(entry.device_ready)
                entry.device_ready = None
            entry.waited = True
        assert self._worker is not None
        self._worker.check()

    def _on_grad(self, param: torch.Tensor) -> None:
        entry = self._entries[param]  # type: ignore[index]
        grad = param.grad
        param.grad = None
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
        entry.consumed.wait()  # the previous micro-batch's gradient has left the staging buffer
        entry.consumed.clear()
        computed = copied = None
        if self._cuda:
            computed = torch.cuda.Event()
            computed.record()
            with torch.cuda.stream(self._d2h):
                self._d2h.wait_event(computed)
                entry.host.staging.copy_(grad.reshape(-1), non_blocking=True)
                copied = torch.cuda.Event()
                copied.record(self._d2h)
            grad.record_stream(self._d2h)
        else:
            entry.host.staging.copy_(grad.reshape(-1))
        del grad
        hyper = AdamHyper.from_group(entry.group, entry.decoupled) if final else None
        if final:
            entry.ready.clear()
            entry.waited = False
        assert self._worker is not None
        job = functools.partial(self._host_job, entry, copied, computed, hyper, first)
        self._worker.submit(entry.index, job)

    def _host_job(
        self, entry: _Entry, copied: Any, computed: Any, hyper: AdamHyper | None, first: bool
    ) -> None:
        try:
            if copied is not None:
                copied.synchronize()
            if hyper is None:  # a micro-batch before the last: accumulate
                if entry.host.accumulated is None:
                    entry.host.accumulated = torch.empty_like(entry.host.master)
                accumulate_on_host(entry.host, first, self._scratch, self.chunk)
                return
            host_adam_step(entry.host, hyper, self._scratch, self.chunk, accumulated=not first)
            self._send_back(entry, computed)
        finally:
            entry.consumed.set()
            if hyper is not None:
                entry.ready.set()

    def _send_back(self, entry: _Entry, computed: Any) -> None:
        target = entry.param.data.view(-1)
        if not self._cuda:
            target.copy_(entry.host.staging)
            return
        with torch.cuda.stream(self._h2d):
            self._h2d.wait_event(computed)  # backward is done with the old weights
            target.copy_(entry.host.staging, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._h2d)
        entry.device_ready = done

    def synchronize(self) -> None:
        """Wait until every queued host update is done and its weights are on the device."""
        self._in_flight = None
        if self._worker is None:
            return
        self._worker.drain()
        if self._cuda:
            self._h2d.synchronize()

    # --- reading and undoing -------------------------------------------------------------
    def master_state_dict(self) -> dict[str, torch.Tensor]:
        """The float32 masters of the offloaded parameters, by name (host tensors)."""
        self.synchronize()
        return {e.name: e.host.master.view(e.shape).clone() for e in self._entries.values()}

    def detach(self) -> None:
        """Put the float32 weights back on their device and the state back in the optimizer."""
        if not self._attached:
            return
        self._attached = False
        if self._simulated:
            self._in_flight = None
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            for _, param in self._params:  # fake tensors: shapes matter, values do not
                param.data = torch.empty_like(param.data, dtype=torch.float32)
            return
        assert self._worker is not None
        try:
            self.synchronize()
        finally:
            self._worker.close()
            self._worker = None
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
        for param, entry in self._entries.items():
            param.data = entry.host.master.view(entry.shape).to(param.device)
            self._restore_state(param, entry)
        for tensor in self._registered:
            torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr())
        self._registered.clear()
        self._entries.clear()
        self._flat.clear()

    def discard(self) -> None:
        """Stop without restoring anything (the model is being dropped): the worker stops,
        the hooks go and the host memory is released."""
        self._attached = False
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for tensor in self._registered:
            torch.cuda.cudart().cudaHostUnregister(tensor.data_ptr())
        self._registered.clear()
        self._entries.clear()
        self._flat.clear()

    def _restore_state(self, param: nn.Parameter, entry: _Entry) -> None:
        before = self._saved_state.get(param)
        steps = float(entry.host.step)
        if before is None and steps == 0:
            return  # no state before, no step since
        group = entry.group
        on_device = bool(group.get("fused") or group.get("capturable"))
        old_step = before.get("step") if before else None
        step_device = (
            old_step.device
            if isinstance(old_step, torch.Tensor)
            else (param.device if on_device else torch.device("cpu"))
        )
        state: dict[str, Any] = {
            "step": torch.tensor(steps, dtype=torch.float32, device=step_device),
            "exp_avg": entry.host.exp_avg.view(entry.shape).to(param.device),
            "exp_avg_sq": entry.host.exp_avg_sq.view(entry.shape).to(param.device),
        }
        self.optimizer.state[param] = state
