"""Timing plans on the local GPU: what ``memfit.plan(..., measure=N)`` chooses between.

Step-time predictions are roughest where the CPU bounds the step (a small model's eager step:
the encoder's and the Qwen2 shape's plans measured 4-72 points from their predicted overheads
on an H200, bench/results/plans_h200_run9.json.gz). Planning on the GPU the job will run on, the
planner can instead run its few best plans for real and keep the fastest: each plan is applied
to one copy of the step (``memfit.apply``), run for a few steps, timed with CUDA events, its
reserved peak read from PyTorch's counters, and undone.

Each plan is visited twice, the second round in reverse order, so that a drift of the machine
(clocks, the host's other load) over the measurement hits the first and last plans alike; its
time is the median of all its timed steps, its peak the highest of its visits. The cached
blocks of one plan are released before the next (``empty_cache``) so that each reserved peak
is its own.

The step trains the module you pass, as ``memfit.measure`` does, and puts it back exactly
afterwards (``memfit.step.kept_state``), whatever happened; a builder is built once, on the GPU.
"""

from __future__ import annotations

import gc
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memfit.apply import apply
from memfit.errors import DeviceError, InvalidInputError
from memfit.measure.calibrate import event_seconds
from memfit.measure.run import _build, _GpuStep
from memfit.step.kept_state import KeptState
from memfit.step.precision import Precision
from memfit.step.undo import applied, undo_all
from memfit.trace.inputs import resolve
from memfit.trace.settings import StepSettings

__all__ = ["PlanTiming", "time_plans", "first_line", "ROUNDS", "WARMUP"]

ROUNDS = 2
"""Visits of each plan (the second round in reverse order)."""

WARMUP = 2
"""Untimed steps at each visit: the first allocates the plan's blocks (and, at the very first
visit, the optimizer's state); the second runs as every later step does."""


@dataclass(frozen=True)
class PlanTiming:
    """One plan as it ran.

    Attributes:
        label: the plan's name, as the planner gave it.
        techniques: what was applied.
        steps_s: the timed steps' seconds, over all visits.
        peak_reserved: the highest reserved peak of its visits, in bytes (0 on a CPU).
        error: why it could not run (out of memory, an applier's error); "" when it ran.
    """

    label: str
    techniques: tuple[Any, ...]
    steps_s: tuple[float, ...] = ()
    peak_reserved: int = 0
    error: str = ""

    @property
    def step_s(self) -> float | None:
        """The median timed step, or None when the plan did not run."""
        return statistics.median(self.steps_s) if self.steps_s and not self.error else None


def time_plans(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any,
    settings: StepSettings,
    plans: Sequence[tuple[str, tuple[Any, ...]]],
    *,
    steps: int = 5,
    device: torch.device | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[PlanTiming]:
    """Run each ``(label, techniques)`` of ``plans`` on the local GPU and time its steps.

    Args:
        model, batch: as for ``memfit.measure`` (a module is put back exactly afterwards).
        settings: the step: loss, forward, optimizer, precision (``memfit.plan``'s).
        plans: the plans to time, each a label and its techniques.
        steps: timed steps per visit (``ROUNDS`` visits a plan).
        device: where to run; default the current GPU. A CPU runs the same loop with the wall
            clock and no memory counters (tests).
        progress: called with a line before each visit.

    Returns:
        One ``PlanTiming`` per plan, in the order given. A plan that runs out of memory or
        fails to apply is recorded with its error and the others still run.

    Raises:
        DeviceError: no GPU and no ``device``.
        InvalidInputError: ``steps`` below 1 or no plans.
    """
    if device is None and not torch.cuda.is_available():
        raise DeviceError("timing plans runs them on a GPU and torch sees none")
    if steps < 1 or not plans:
        raise InvalidInputError(
            f"time_plans needs steps >= 1 (got {steps}) and at least one plan (got {len(plans)})"
        )
    report = progress or (lambda line: None)
    precision = Precision.parse(settings.precision)
    _, model, batch = resolve(model, batch, settings.batch_size, settings.seq_len)
    run_on = device or torch.device("cuda", torch.cuda.current_device())
    kept = KeptState(model if isinstance(model, nn.Module) else None, moved_to=run_on)
    runs = [_Runs(label, tuple(techniques)) for label, techniques in plans]
    try:
        gpu = _build(model, batch, settings, precision, run_on)
        for round_ in range(ROUNDS):
            order = runs if round_ % 2 == 0 else runs[::-1]
            for runs_of in order:
                if runs_of.error:
                    continue
                report(f"timing {runs_of.label} (round {round_ + 1} of {ROUNDS})")
                _visit(gpu, runs_of, settings, precision, steps, run_on)
        del gpu
    finally:
        _release(run_on)
        kept.restore()
    return [r.timing() for r in runs]


@dataclass
class _Runs:
    """What the visits of one plan found so far."""

    label: str
    techniques: tuple[Any, ...]
    steps_s: list[float] | None = None
    peak: int = 0
    error: str = ""

    def timing(self) -> PlanTiming:
        return PlanTiming(self.label, self.techniques, tuple(self.steps_s or ()), self.peak,
                          self.error)  # fmt: skip


def _visit(
    gpu: _GpuStep,
    runs: _Runs,
    settings: StepSettings,
    precision: Precision,
    steps: int,
    device: torch.device,
) -> None:
    """Apply the plan, run its warm-up and timed steps, read its peak, undo it."""
    cuda = device.type == "cuda"
    _release(device)
    try:
        step = apply(
            list(runs.techniques),
            gpu.module,
            gpu.optimizer,
            loss_fn=settings.loss_fn,
            forward=settings.forward,
            precision=precision.name,
            device_type=device.type,
        )
        try:
            for _ in range(WARMUP):
                step(gpu.example)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            timed = [_seconds(step, gpu.example, cuda) for _ in range(steps)]
            peak = torch.cuda.max_memory_reserved() if cuda else 0
        finally:
            if applied(gpu.module):  # an empty plan changes nothing
                undo_all(gpu.module)
    except torch.OutOfMemoryError as error:
        traceback.clear_frames(error.__traceback__)  # the failed step's tensors go now
        runs.error = f"out of memory ({first_line(error)})"
        return
    except Exception as error:  # an applier's or the step's: reported, the others still run
        runs.error = f"{type(error).__name__}: {first_line(error)}"
        return
    runs.steps_s = [*(runs.steps_s or []), *timed]
    runs.peak = max(runs.peak, peak)


def _seconds(step: Callable[[Any], Any], example: Any, cuda: bool) -> float:
    """One step's time: CUDA events on a GPU, the wall clock elsewhere."""
    if cuda:
        return event_seconds(lambda: step(example))
    started = time.perf_counter()
    step(example)
    return time.perf_counter() - started


def _release(device: torch.device) -> None:
    """Free what the last plan left cached, so that the next one's reserved peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def first_line(error: BaseException) -> str:
    """An error's first line (its type's name when it has no message)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
