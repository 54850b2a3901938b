"""HostOptimizer: Adam/AdamW's float32 masters and state in host memory, the step overlapped.

The GPU keeps each offloaded weight in the working dtype only (bfloat16 under bf16 autocast: the
copy autocast would have made for the matrix product), so weights cost 2 bytes per parameter on
the GPU instead of 4 + 4 (gradient) + 8 (Adam's moments). During backward, as soon as a
weight's gradient is complete (``register_post_accumulate_grad_hook``), it is widened to
float32 and copied to pinned host memory on a side stream, and its GPU memory released; a
worker thread runs PyTorch's fused CPU Adam/AdamW on the float32 master, which a second side
stream copies back to the GPU and rounds to the working dtype there. A forward pre-hook on each
module that owns an offloaded weight makes the compute stream wait for that copy, so the next
forward starts as soon as its first layer is updated (the worker runs earliest deadline first,
``host_worker``), and the host step overlaps the rest of backward and the next forward.

Why this is the standard step's math: under bf16 autocast a Linear multiplies ``bf16(W)``; the
float32 gradient of ``W`` is the bfloat16 gradient of ``bf16(W)`` widened (``ToCopyBackward``),
so keeping ``bf16(W)`` as the leaf gives the same gradient, and the host applies the same
Adam/AdamW update to the same float32 ``W`` (PyTorch's CPU kernel instead of the CUDA one: equal
to rounding), rounded as autocast rounds it. Micro-batches' gradients add up in float32 on the
host, as in ``W.grad``.

The user's optimizer keeps every other parameter (embeddings, norms) and steps them on the GPU
as before: an offloaded parameter's ``.grad`` is always None when it steps, so it skips them.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from memfit.errors import InvalidInputError
from memfit.step.host_adam import HostParam
from memfit.step.host_checkpoints import HostCheckpoints
from memfit.step.host_params import (
    check_host_optimizer,
    default_threads,
    restore_state,
    take_state,
)
from memfit.step.host_updates import HostEntry, HostUpdates
from memfit.step.host_worker import HostWorker
from memfit.step.pinned import PinnedHost

__all__ = ["HostOptimizer"]


class HostOptimizer(HostUpdates, HostCheckpoints):
    """Run ``optimizer``'s update of ``params`` on the host, overlapped with backward.

    Args:
        model: the model (its modules get the forward pre-hooks).
        optimizer: a ``torch.optim.Adam`` or ``AdamW`` that holds ``params``.
        params: ``(name, parameter)`` to offload (``offloadable_parameters``), in forward order.
        working_dtype: the dtype the GPU keeps (``torch.bfloat16`` under bf16 autocast,
            ``torch.float32`` without autocast).
        threads: the worker's CPU threads; default ``default_threads()``.

    ``attach()`` moves the masters and any existing optimizer state to the host and installs
    the hooks; ``detach()`` puts everything back. ``final_micro_batch`` tells the gradient hooks
    whether this backward ends the step (set by ``TrainStep`` when it splits a batch).

    On fake tensors (memfit's tracer) it changes what the GPU holds in the same way (working
    copies; the last gradients held until their copies run; the float32 buffers of the
    copies each way in their side streams' pools: ``HostUpdates._drop_grad``) and allocates
    nothing on the host: ``host_bytes()`` gives what it would hold there.

    Known limitations:
        An offloaded weight must be used only inside the forward of the modules that own it
        (a use elsewhere would read weights still being updated; detected, it raises). The
        step returns while the worker still updates the last weights: a forward, a
        ``state_dict()`` (of the model, a module owning an offloaded weight, or the optimizer),
        ``master_state_dict()`` and undo wait for it; reading a weight's tensor directly
        (``param.detach()``, ``torch.save(model)``) needs ``synchronize()`` first
        (``TrainStep.synchronize()``). While attached, checkpoints go through the host
        (``memfit.step.host_checkpoints``): ``model.state_dict()`` and
        ``optimizer.state_dict()`` hold the float32 masters and the host's Adam state (host
        tensors), and their ``load_state_dict`` writes into them; ``load_state_dict(assign=True)``
        on the model is refused. No gradient clipping by
        global norm (the update starts before backward ends), no fp16 loss scaling, no
        amsgrad; one CUDA device. Backward waits on the CPU while more than
        ``_GRADS_IN_FLIGHT`` (8) gradient copies are queued (each holds its gradient's GPU
        memory until it runs).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: Iterable[tuple[str, nn.Parameter]],
        *,
        working_dtype: torch.dtype = torch.bfloat16,
        threads: int | None = None,
    ) -> None:
        check_host_optimizer(optimizer)
        self._model = weakref.ref(model)  # the undo registry must not keep the model alive
        self.optimizer = optimizer
        self.working_dtype = working_dtype
        self.threads = threads if threads is not None else default_threads()
        self.final_micro_batch = True
        self._params = list(params)
        self._entries: dict[nn.Parameter, HostEntry] = {}
        self._handles: list[Any] = []
        self._flat: dict[str, torch.Tensor] = {}
        self._saved_state: dict[nn.Parameter, dict[str, Any]] = {}
        self._worker: HostWorker | None = None
        self._pinned = PinnedHost()
        self.forward_wait_s = 0.0  # time forwards waited for host updates (benchmarks read it)
        self.adam_s = 0.0  # time in the host's Adam/AdamW kernel
        self._attached = False
        self._cuda = False
        self._simulated = any(is_fake(p) for _, p in self._params)
        self._in_flight: deque[Any] = deque()  # gradients' copies (events; simulated: grads)
        self._released: list[torch.Tensor] = []  # simulated: the float32 weights replaced
        group_of = {p: g for g in optimizer.param_groups for p in g["params"]}
        for name, param in self._params:
            if param not in group_of:
                raise InvalidInputError(
                    f"OffloadOptimizer: parameter {name} is not in the optimizer; give the "
                    f"optimizer all the model's trained parameters"
                )
        self._group_of = group_of

    def host_bytes(self, micro_batches: int = 1) -> dict[str, int]:
        """Host memory this optimizer holds, by part (exact: flat float32 tensors)."""
        numel = sum(p.numel() for _, p in self._params)
        parts = {
            "master weights": 4 * numel,
            "optimizer state": 8 * numel,
            "gradients": 4 * numel,
        }
        if micro_batches > 1:
            parts["gradient accumulation"] = 4 * numel
        return parts

    def offloaded_params(self) -> int:
        """Parameters the host updates."""
        return sum(p.numel() for _, p in self._params)

    def first_share(self) -> float:
        """The share of the offloaded parameters in the first block the forward uses (their
        names up to three components from the end: ``layers.0`` of ``layers.0.mlp.up.weight``),
        what the next forward waits for after backward."""
        if not self._params:
            return 0.0
        first = self._params[0][0].rsplit(".", 3)[0]
        same = sum(p.numel() for n, p in self._params if n.rsplit(".", 3)[0] == first)
        return same / self.offloaded_params()

    # --- setup ---------------------------------------------------------------------------
    def attach(self) -> None:
        """Move masters and state to the host, shrink the GPU weights, install the hooks."""
        params = [p for _, p in self._params]
        if not params or self._attached:
            return
        self._attached = True
        if self._simulated:
            for param in params:
                self._released.append(param.data)
                param.data = param.data.to(self.working_dtype)
                self._handles.append(
                    param.register_post_accumulate_grad_hook(_weak(self._drop_grad))
                )
            return
        self._cuda = params[0].device.type == "cuda"
        if self._cuda:
            self._d2h = torch.cuda.Stream(params[0].device)
            self._h2d = torch.cuda.Stream(params[0].device)
        total = sum(p.numel() for p in params)
        self._flat = {
            "master": torch.empty(total, dtype=torch.float32),
            "exp_avg": torch.zeros(total, dtype=torch.float32),
            "exp_avg_sq": torch.zeros(total, dtype=torch.float32),
            "grad": torch.empty(total, dtype=torch.float32),
        }
        self._pin(self._flat["master"])  # the copies back read the masters
        self._pin(self._flat["grad"])
        offset = 0
        for index, (name, param) in enumerate(self._params):
            n = param.numel()
            views = {k: v[offset : offset + n] for k, v in self._flat.items()}
            offset += n
            views["master"].copy_(param.detach().reshape(-1))
            step = torch.zeros((), dtype=torch.float32)
            host = HostParam(
                views["master"], views["exp_avg"], views["exp_avg_sq"], step, views["grad"]
            )
            saved = take_state(self.optimizer, param, host)
            if saved is not None:
                self._saved_state[param] = saved
            group = self._group_of[param]
            decoupled = isinstance(self.optimizer, torch.optim.AdamW) or bool(
                group.get("decoupled_weight_decay", False)
            )
            entry = HostEntry(name, param, index, host, group, decoupled, param.shape)
            entry.ready.set()
            entry.consumed.set()
            self._entries[param] = entry
        self._make_working_copies()
        for param in params:
            self._handles.append(param.register_post_accumulate_grad_hook(_weak(self._on_grad)))
        self._install_waits()
        self._worker = HostWorker(self.threads)

    def _make_working_copies(self) -> None:
        """Replace the float32 weights by working copies made from the host masters.

        All float32 weights leave the GPU first and the allocator's cache is emptied: working
        copies made one by one would nest in the float32 weights' freed blocks and keep their
        segments reserved (the tracer accordingly counts the float32 weights as never on the
        device: ``released``).
        """
        for param in self._entries:
            param.data = torch.empty(0, dtype=self.working_dtype, device=param.device)
        if self._cuda:
            torch.cuda.empty_cache()
        for param, entry in self._entries.items():
            param.data = entry.host.master.view(entry.shape).to(param.device, self.working_dtype)

    def released(self) -> list[torch.Tensor]:
        """On fake tensors: the float32 weights the real attach frees from the device before
        the step (and empties the cache of), to be counted as never there; handed out once."""
        released, self._released = self._released, []
        return released

    def _pin(self, tensor: torch.Tensor) -> None:
        """Page-lock ``tensor`` in place when the step runs on a GPU (``step.pinned``)."""
        if self._cuda:
            self._pinned.pin(tensor)

    def _install_waits(self) -> None:
        """Forwards wait for their modules' updates; ``state_dict()`` of a module that owns an
        offloaded weight, or of the optimizer, waits for every update (a checkpoint saved
        right after the step would otherwise hold weights the worker is still writing)."""
        model = self._model()
        assert model is not None
        for module in model.modules():
            owned = [self._entries[p] for p in module._parameters.values() if p in self._entries]
            if owned:
                hook = functools.partial(self._wait_for, owned)
                self._handles.append(module.register_forward_pre_hook(lambda m, a, h=hook: h()))
                self._handles.append(
                    module.register_state_dict_pre_hook(lambda m, p, k: self.synchronize())
                )
        self._handles.append(
            self.optimizer.register_state_dict_pre_hook(lambda o: self.synchronize())
        )
        self._install_checkpoint_hooks(model)

    # --- reading and undoing -------------------------------------------------------------
    def master_state_dict(self) -> dict[str, torch.Tensor]:
        """The float32 masters of the offloaded parameters, by name (host tensors)."""
        self.synchronize()
        return {e.name: e.host.master.view(e.shape).clone() for e in self._entries.values()}

    def detach(self) -> None:
        """Put the float32 weights back on their device and the state back in the optimizer."""
        if not self._attached:
            return
        if self._simulated:
            self._stop()
            for _, param in self._params:  # fake tensors: shapes matter, values do not
                param.data = torch.empty_like(param.data, dtype=torch.float32)
            return
        try:
            self.synchronize()
        finally:
            self._stop()
        for param, entry in self._entries.items():
            param.data = entry.host.master.view(entry.shape).to(param.device)
        left = [
            p
            for p, e in self._entries.items()
            if not restore_state(self.optimizer, p, e.host, e.shape, self._saved_state.get(p))
        ]
        if left:
            warnings.warn(
                f"OffloadOptimizer undo: the optimizer state of {len(left)} parameters does not "
                f"fit on {left[0].device} beside the weights and stays in host memory (as CPU "
                f"tensors in optimizer.state): optimizer.state_dict() saves it as it is; "
                f"stepping this optimizer needs it on the device (free memory, then "
                f"optimizer.load_state_dict(optimizer.state_dict()) moves it there)",
                stacklevel=3,
            )
        self._release_host()

    def discard(self) -> None:
        """Stop without restoring anything (the model is being dropped)."""
        self._stop()
        self._release_host()

    def _stop(self) -> None:
        self._attached = False
        self._in_flight.clear()
        if self._worker is not None:
            self._worker.close()
            self._worker = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _release_host(self) -> None:
        if self._cuda:  # the side streams' copies read and write the pinned buffers
            self._d2h.synchronize()
            self._h2d.synchronize()
        self._pinned.release()
        self._entries.clear()
        self._flat.clear()


def _weak(method: Callable[[Any], None]) -> Callable[[Any], None]:
    """A gradient hook calling ``method`` while its object lives. Such hooks live in C++, where
    the garbage collector cannot see the cycle parameter -> hook -> HostOptimizer -> optimizer ->
    parameter: a strong reference would keep a dropped model's parameters and state for good
    (the undo registry and ``TrainStep`` keep the HostOptimizer alive while it is in use)."""
    ref = weakref.WeakMethod(method)

    def hook(param: Any) -> None:
        bound = ref()
        if bound is not None:
            bound(param)

    return hook
