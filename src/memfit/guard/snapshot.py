"""Before each guarded step, keep what a failed attempt can change; after a failure, put it back.

A failed attempt (an out-of-memory error somewhere in forward, backward or the optimizer step)
can change four things, and the snapshot keeps each as cheaply as it can:

- **Gradients.** None before the step (``zero_grad(set_to_none=True)``, PyTorch's default):
  nothing is copied. Zero tensors that the guard saw being zeroed, untouched since (their
  ``_version`` is unchanged): nothing is copied either. Otherwise (gradients accumulated over
  earlier calls) they are copied to ``snapshot_device`` ("cpu" by default; the copies are reused
  from step to step): the one case with a real cost, one gradient-sized buffer.
- **Buffers** that the forward pass changes (BatchNorm running statistics): copied on the
  device. The first step copies every buffer; after it only those whose ``_version`` moved.
- **Optimizer state.** New per-parameter state created during the attempt (the first step's
  lazy ``exp_avg`` and ``exp_avg_sq``) is deleted; small tensors (step counters) are copied;
  hyper-parameters of each param group are copied. Large tensors (parameters, moments) are only
  *checked*: their ``_version`` counters tell whether the attempt wrote to them. If it did, they
  can only be restored from a full copy (``optimizer_copy="cpu"`` or ``"device"``, costing the
  parameters plus the optimizer state each step); without one the guard raises
  ``StateRestoreError`` instead of continuing from a half-applied update.
- **Grad scaler**: its scale, growth tracker and per-optimizer records (a few bytes).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from memfit.guard.errors import StateRestoreError
from memfit.units import format_bytes

__all__ = ["StepSnapshot"]

_SMALL = 16  # state tensors with at most this many elements are copied, not just checked


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class StepSnapshot:
    """State of one guarded step, taken before it and restorable after a failed attempt.

    Args:
        params: every parameter the step can give a gradient to.
        optimizer: the optimizer, or None.
        model: the module whose buffers are kept, or None.
        grad_scaler: a ``torch.amp.GradScaler``, or None.
        grads_to: where copies of non-zero gradients go: "cpu" or "device".
        optimizer_copy: "none" (check only), "cpu" or "device": full copies of parameters and
            optimizer state, so that a failure inside ``optimizer.step()`` is always restorable.
    """

    def __init__(
        self,
        params: list[nn.Parameter],
        *,
        optimizer: torch.optim.Optimizer | None,
        model: nn.Module | None,
        grad_scaler: Any | None,
        grads_to: str = "cpu",
        optimizer_copy: str = "none",
    ) -> None:
        self.params = params
        self.optimizer = optimizer
        self.grad_scaler = grad_scaler
        self.grads_to = grads_to
        self.optimizer_copy = optimizer_copy
        self._buffers = [b for b in model.buffers()] if model is not None else []
        self._mutable_buffers: list[torch.Tensor] | None = None  # learned after one clean step
        self._clear: dict[int, tuple[weakref.ref[torch.Tensor], int]] = {}  # grads known zero
        self._copies: dict[int, torch.Tensor] = {}  # reusable copy buffers, by id of the source
        self.nbytes = 0
        self._reset()

    def _reset(self) -> None:
        self._grads: list[tuple[nn.Parameter, torch.Tensor | None, str]] = []
        self._buffer_copies: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._buffer_versions: list[tuple[torch.Tensor, int]] = []
        self._state_keys: dict[Any, frozenset[Any]] = {}
        self._groups: list[dict[str, Any]] = []
        self._small: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        self._checked: list[tuple[str, torch.Tensor, int]] = []
        self._full: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._scaler: dict[str, Any] | None = None

    def _copy(self, source: torch.Tensor, where: str) -> torch.Tensor:
        device = torch.device("cpu") if where == "cpu" else source.device
        buffer = self._copies.get(id(source))
        if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
            pin = device.type == "cpu" and source.device.type == "cuda"
            buffer = torch.empty(source.shape, dtype=source.dtype, device=device, pin_memory=pin)
            self._copies[id(source)] = buffer
        buffer.copy_(source, non_blocking=True)
        self.nbytes += _nbytes(buffer)
        return buffer

    # ---- taking -------------------------------------------------------------------------

    @torch.no_grad()
    def take(self) -> None:
        """Record the state before a step (no device synchronisation)."""
        self._reset()
        self.nbytes = 0
        for p in self.params:
            g = p.grad
            if g is None:
                self._grads.append((p, None, "none"))
            elif self._is_clear(p, g):
                self._grads.append((p, g, "zero"))
            else:
                self._grads.append((p, g, "copy"))
                self._copy(g, self.grads_to)
        buffers = self._buffers if self._mutable_buffers is None else self._mutable_buffers
        self._buffer_copies = [(b, self._copy(b, "device")) for b in buffers]
        self._buffer_versions = [(b, b._version) for b in self._buffers]
        if self.optimizer is not None:
            self._take_optimizer(self.optimizer)
        if self.grad_scaler is not None:
            self._scaler = _scaler_state(self.grad_scaler)

    def _take_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        self._state_keys = {p: frozenset(s.keys()) for p, s in optimizer.state.items()}
        self._groups = [
            {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
        ]
        large: list[tuple[str, torch.Tensor]] = []
        for group in optimizer.param_groups:
            large.extend(("parameter", p) for p in group["params"])
        small: dict[tuple[torch.device, torch.dtype, torch.Size], list[torch.Tensor]] = {}
        for state in optimizer.state.values():
            for name, value in state.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if value.numel() <= _SMALL:
                    small.setdefault((value.device, value.dtype, value.shape), []).append(value)
                else:
                    large.append((f"state {name!r}", value))
        # one stacked copy per kind (step counters of every parameter: one op, not hundreds)
        self._small = [(tensors, torch.stack(tensors)) for tensors in small.values()]
        self._checked = [(what, t, t._version) for what, t in large]
        if self.optimizer_copy != "none":
            self._full = [(t, self._copy(t, self.optimizer_copy)) for _, t in large]

    def _is_clear(self, p: nn.Parameter, g: torch.Tensor) -> bool:
        entry = self._clear.get(id(p))
        return entry is not None and entry[0]() is g and entry[1] == g._version

    def learn_buffers(self) -> None:
        """After a clean step: from now on copy only the buffers that the step changed."""
        if self._mutable_buffers is None:
            self._mutable_buffers = [b for b, v in self._buffer_versions if b._version != v]

    def mark_grads_clear(self, params: Iterable[nn.Parameter] | None = None) -> None:
        """Remember that the current gradients are None or zero (just zeroed)."""
        for p in self.params if params is None else params:
            if p.grad is not None:
                self._clear[id(p)] = (weakref.ref(p.grad), p.grad._version)
            else:
                self._clear.pop(id(p), None)

    def release(self) -> None:
        """Drop the references of the last snapshot (its reusable buffers stay)."""
        self._reset()

    # ---- restoring ----------------------------------------------------------------------

    @torch.no_grad()
    def restore(self) -> list[str]:
        """Put back the state of ``take()``.

        Returns:
            Warnings: buffers that changed and had no copy.

        Raises:
            StateRestoreError: the attempt wrote to parameters or large optimizer state and
                there is no full copy to restore them from.
        """
        if self.optimizer is not None:
            self._restore_optimizer(self.optimizer)
        for p, g, kind in self._grads:
            if kind == "none":
                p.grad = None
                continue
            assert g is not None
            if kind == "zero":
                g.zero_()
            else:
                g.copy_(self._copies[id(g)])
            p.grad = g
            if kind == "zero":
                self._clear[id(p)] = (weakref.ref(g), g._version)
        for buffer, saved in self._buffer_copies:
            buffer.copy_(saved)
        copied = {id(b) for b, _ in self._buffer_copies}
        warnings = [
            f"buffer of shape {tuple(b.shape)} changed in the failed attempt and had no copy"
            for b, v in self._buffer_versions
            if b._version != v and id(b) not in copied
        ]
        if self.grad_scaler is not None and self._scaler is not None:
            _restore_scaler(self.grad_scaler, self._scaler)
        return warnings

    @torch.no_grad()
    def restore_optimizer(self) -> None:
        """Put back the optimizer state of ``take()`` only (after a failed ``optimizer.step()``:
        the gradients, buffers and grad scaler are those the step is retried with).

        Raises:
            StateRestoreError: as ``restore``.
        """
        if self.optimizer is not None:
            self._restore_optimizer(self.optimizer)

    def _restore_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        for p in list(optimizer.state.keys()):
            keys = self._state_keys.get(p)
            if keys is None:
                del optimizer.state[p]
                continue
            for key in [k for k in optimizer.state[p] if k not in keys]:
                del optimizer.state[p][key]
        for group, hyper in zip(optimizer.param_groups, self._groups, strict=True):
            group.update(hyper)
        for tensors, stacked in self._small:
            torch._foreach_copy_(tensors, list(stacked.unbind(0)))
        if self._full:
            for tensor, copy in self._full:
                tensor.copy_(copy)
            return
        changed = [(what, t) for what, t, v in self._checked if t._version != v]
        if changed:
            size = sum(_nbytes(t) for _, t in changed)
            kinds = sorted({what for what, _ in changed})
            raise StateRestoreError(
                f"the failed optimizer step had already updated {len(changed)} tensors "
                f"({format_bytes(size)}: {', '.join(kinds)}) before running out of memory, and "
                f"the guard keeps no copy of them, so it cannot retry exactly; pass "
                f"OOMGuard(..., optimizer_copy='cpu') to keep one (costs parameters plus "
                f"optimizer state in host memory and one copy per step), or give the optimizer "
                f"more room (foreach=False needs less memory in its step)"
            )


def _scaler_state(scaler: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in ("_scale", "_growth_tracker"):
        value = getattr(scaler, name, None)
        state[name] = value.clone() if isinstance(value, torch.Tensor) else value
    per_optimizer = getattr(scaler, "_per_optimizer_states", None)
    state["_per_optimizer_states"] = (
        {key: dict(value) for key, value in per_optimizer.items()} if per_optimizer else None
    )
    return state


def _restore_scaler(scaler: Any, state: dict[str, Any]) -> None:
    for name in ("_scale", "_growth_tracker"):
        saved = state[name]
        current = getattr(scaler, name, None)
        if isinstance(saved, torch.Tensor) and isinstance(current, torch.Tensor):
            current.copy_(saved)
        else:
            setattr(scaler, name, saved)
    per_optimizer = getattr(scaler, "_per_optimizer_states", None)
    if per_optimizer is not None:
        per_optimizer.clear()
        for key, value in (state["_per_optimizer_states"] or {}).items():
            per_optimizer[key] = dict(value)
