"""An out-of-memory error inside ``optimizer.step()``: retry the step itself, not the batch.

When ``optimizer.step()`` runs, backward is over and the gradients are complete; a smaller
micro-batch would not change what the step needs (parameters, gradients, state and the step's
own temporaries). So the guard wraps ``optimizer.step`` for the length of a guarded step, and on
``torch.OutOfMemoryError`` inside it:

1. leaves the ``except`` block (the exception keeps the failing frames' temporaries alive),
   frees memory and puts back what the failed step wrote (new state keys, step counters,
   hyper-parameters; parameters and moments from ``optimizer_copy`` when it wrote to them);
2. runs the same step again, as configured: an OOM that came from memory another part of the
   program held for a moment (a transient) is over;
3. runs it per parameter (``foreach=False``: temporaries of one parameter at a time instead of
   one per parameter), and keeps doing so from then on when that is what worked;
4. raises ``OOMUnrecoverableError`` with the optimizer's figures and what would fit it.

Everything that follows ``optimizer.step()`` in the user's step (``zero_grad``, the scheduler,
logging) then runs once, as in a step that never failed.

Known limitations:
    The gradients must be untouched by the failed step (PyTorch's optimizers write to new
    tensors when they transform gradients); a step that wrote to them raises
    ``StateRestoreError``. An optimizer whose step runs collectives
    (``ZeroRedundancyOptimizer``) is not retried: the other ranks would be inside the collective.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from memfit.guard.errors import OOMUnrecoverableError, StateRestoreError
from memfit.guard.metrics import GuardMetrics
from memfit.guard.oom import OOMInfo, parse_oom_message
from memfit.guard.snapshot import StepSnapshot
from memfit.units import format_bytes

__all__ = ["retrying_step", "per_parameter_possible", "optimizer_figures"]

log = logging.getLogger("memfit.guard")

_COLLECTIVE_OPTIMIZERS = ("ZeroRedundancyOptimizer",)


def per_parameter_possible(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``foreach=False`` would change how this optimizer steps (not fused, not off)."""
    return any(
        "foreach" in g and g.get("foreach") is not False and not g.get("fused")
        for g in optimizer.param_groups
    )


@contextlib.contextmanager
def per_parameter(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within the block, every param group that has a ``foreach`` flag steps with it False."""
    saved = [(g, g["foreach"]) for g in optimizer.param_groups if "foreach" in g]
    for group, _ in saved:
        group["foreach"] = False
    try:
        yield
    finally:
        for group, value in saved:
            group["foreach"] = value


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def optimizer_figures(optimizer: torch.optim.Optimizer) -> str:
    """``AdamW over 12 tensors: parameters 1.2 GiB, gradients 1.2 GiB, state 2.4 GiB``."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    state = (v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    grads = (p.grad for p in params if p.grad is not None)
    sizes = [format_bytes(_tensor_bytes(part)) for part in (iter(params), grads, state)]
    return (
        f"{type(optimizer).__name__} over {len(params)} tensors: parameters {sizes[0]}, "
        f"gradients {sizes[1]}, optimizer state {sizes[2]}"
    )


class _StepRetry:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        real_step: Callable[..., Any],
        snapshot: StepSnapshot,
        metrics: GuardMetrics,
        free_memory: Callable[[], None],
    ) -> None:
        self.optimizer = optimizer
        self.real_step = real_step
        self.snapshot = snapshot
        self.metrics = metrics
        self.free_memory = free_memory
        if hasattr(real_step, "_wrapped_by_lr_sched"):  # so LRScheduler.step does not warn
            self._wrapped_by_lr_sched = True

    def _stages(self) -> list[str]:
        stages = ["as configured", "again after freeing memory"]
        if not self.metrics.lean_optimizer and per_parameter_possible(self.optimizer):
            stages.append("per parameter (foreach=False)")
        return stages

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        stages = self._stages()
        grads = [
            (p, p.grad, p.grad._version if p.grad is not None else 0)
            for g in self.optimizer.param_groups
            for p in g["params"]
        ]
        last: OOMInfo | None = None
        for number, stage in enumerate(stages):
            lean = stage.startswith("per parameter")
            failed: OOMInfo | None = None
            try:
                with per_parameter(self.optimizer) if lean else contextlib.nullcontext():
                    result = self.real_step(*args, **kwargs)
            except torch.OutOfMemoryError as exc:
                failed = parse_oom_message(str(exc))
            if failed is None:
                if lean:
                    self.metrics.lean_optimizer = True
                    log.warning(
                        "memfit.guard: optimizer.step() fits per parameter (foreach=False); "
                        "stepping so from now on"
                    )
                return result
            # outside the except block: the failed step's frames and temporaries are gone
            last = failed
            self.metrics.ooms += 1
            self.metrics.step_ooms += 1
            self.metrics.last_oom = failed
            self.free_memory()
            self._put_back(grads)
            if number + 1 < len(stages):
                self.metrics.step_retries += 1
                log.warning(
                    "memfit.guard: OOM in optimizer.step() (%s); gradients are complete: "
                    "running the step %s",
                    failed.summary(),
                    stages[number + 1],
                )
        assert last is not None
        raise OOMUnrecoverableError(
            f"out of memory in optimizer.step() after {len(stages)} tries ({', '.join(stages)}); "
            f"{optimizer_figures(self.optimizer)}; last error: {last.summary()}. Parameters and "
            f"optimizer state are as before the step. A smaller micro-batch does not help the "
            f"step: make the optimizer need less, with a fused step (fused=True, or memfit's "
            f"FusedOptimizer: updates in place), low-bit optimizer state (8-bit AdamW: about 2 "
            f"bytes per parameter instead of 8), or optimizer state offloaded to the CPU; "
            f"`memfit plan` names the techniques that fit a budget",
            oom=last,
            micro_batch_size=self.metrics.micro_batch_size or 0,
            phase="optimizer step",
        )

    def _put_back(self, grads: list[tuple[torch.Tensor, torch.Tensor | None, int]]) -> None:
        for p, grad, version in grads:
            if p.grad is not grad or (grad is not None and grad._version != version):
                raise StateRestoreError(
                    f"the failed optimizer.step() changed the gradient of a parameter of shape "
                    f"{tuple(p.shape)}, so the step cannot be retried on the same gradients; "
                    f"use an optimizer that leaves .grad as it is, or make the step fit (fused "
                    f"step, low-bit state, offload)"
                )
        self.snapshot.restore_optimizer()


@contextlib.contextmanager
def retrying_step(
    optimizer: torch.optim.Optimizer,
    snapshot: StepSnapshot,
    metrics: GuardMetrics,
    free_memory: Callable[[], None],
) -> Iterator[None]:
    """Within the block, ``optimizer.step`` retries itself on out-of-memory (module docstring)."""
    if type(optimizer).__name__ in _COLLECTIVE_OPTIMIZERS:
        yield
        return
    had = "step" in vars(optimizer)
    previous = vars(optimizer).get("step")
    optimizer.step = _StepRetry(  # type: ignore[method-assign]
        optimizer, optimizer.step, snapshot, metrics, free_memory
    )
    try:
        yield
    finally:
        if had:
            optimizer.step = previous  # type: ignore[method-assign, assignment]
        else:
            del optimizer.step
