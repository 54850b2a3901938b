"""``memfit.measure``: the same training step run for real on the local GPU.

It returns the MemoryProfile schema that ``memfit.estimate`` predicts, so the two compare module
by module: the same step function (``memfit.step.loss``) and the same recorder run on real CUDA
tensors; the peaks come from PyTorch's own counters (``max_memory_allocated/reserved``) over
steady-state steps after warm-up.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from memfit.devices import local_device
from memfit.errors import DeviceError, InvalidInputError
from memfit.measure.op_probe import OpCost, OpProbe
from memfit.profile import Category, MemoryProfile, Phase, TimelineEvent
from memfit.step.batch import describe_batch
from memfit.step.loss import LossFn
from memfit.step.precision import Precision
from memfit.step.train_step import TrainStep
from memfit.trace.assemble import assemble_profile, module_table, trainable_param_bytes
from memfit.trace.inputs import resolve
from memfit.trace.modules import RecomputeSafeModuleTracker as ModuleTracker
from memfit.trace.optimizers import make_optimizer, optimizer_label
from memfit.trace.recorder import MemoryRecorder, Trace, live_until
from memfit.trace.replay import replay

__all__ = ["measure", "measure_step", "MeasuredStep"]


@dataclass
class MeasuredStep:
    """A measured step: the profile, the recorded trace of its last step, per-op readings."""

    profile: MemoryProfile
    trace: Trace
    marks: dict[str, int]
    readings: list[tuple[Phase, int, int, str, int]]
    op_costs: list[OpCost] = field(default_factory=list)


_PHASES = {"forward": Phase.FORWARD, "backward": Phase.BACKWARD}


def _no_mark(stage: str) -> None:
    return None


def measure_step(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    *,
    loss_fn: LossFn | None = None,
    forward: Callable[[Any, Any], Any] | None = None,
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = "adamw",
    precision: str | Precision = "bf16-mixed",
    batch_size: int | None = None,
    seq_len: int | None = None,
    warmup: int = 3,
    steps: int = 2,
    snapshot: str | None = None,
    op_probe: bool = False,
) -> MeasuredStep:
    """Run warm-up steps, then measure steady-state steps on the local GPU (with the trace).

    Args:
        model: an ``nn.Module`` (moved to the GPU), a builder (built on the GPU) or a zoo name.
        batch: as for ``memfit.estimate``; tensors are copied to the GPU once.
        warmup: steps before the measurement (the optimizer creates its state in the first).
        steps: measured steps; the last one also records allocations per module.
        snapshot: a path to write a PyTorch memory snapshot of the measured steps to
            (``torch.cuda.memory._dump_snapshot``; open it with ``memfit report --snapshot``).
        op_probe: run one more step afterwards that records each operator's memory
            (``memfit.measure.op_probe``), to find kernels' hidden scratch memory.

    Returns:
        A MemoryProfile with ``source="measure"``; ``outside_pytorch`` holds what the process
        uses beyond PyTorch's allocator (CUDA context, libraries), from ``cudaMemGetInfo``.

    Known limitations:
        * Other processes on the same GPU inflate ``outside_pytorch``.
        * The first call in a process includes one-time library workspaces, as a real first
          run does; ``memfit.estimate`` predicts exactly that.
    """
    if not torch.cuda.is_available():
        raise DeviceError(
            "memfit.measure runs the step on a GPU and torch sees none; use memfit.estimate "
            "to predict it without one"
        )
    if warmup < 1 or steps < 1:
        raise InvalidInputError(f"warmup={warmup} and steps={steps} must both be at least 1")
    spec = local_device()
    precision = Precision.parse(precision)
    name, model, batch = resolve(model, batch, batch_size, seq_len)
    cuda = torch.device("cuda")
    # blocks cached by earlier work in this process would count in this step's reserved peak
    gc.collect()
    torch.cuda.empty_cache()
    if isinstance(model, nn.Module):
        module = model.to(cuda)
    else:
        with cuda:
            module = model()
    if precision.param_dtype is not None:
        module = module.to(precision.param_dtype)
    with cuda:
        example = batch() if callable(batch) else batch
    example = tree_map(lambda t: t.to(cuda) if isinstance(t, torch.Tensor) else t, example)
    trainable = [p for p in module.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, trainable)
    train_step = TrainStep(module, opt, loss_fn=loss_fn, forward=forward, precision=precision)

    def step(mark: Callable[[str], None] = _no_mark) -> None:
        train_step.mark = mark
        train_step.step(example)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if snapshot:
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    for _ in range(steps - 1):
        step()
    recorder, marks, readings = _recorded_step(module, example, opt, step)
    torch.cuda.synchronize()
    peak_allocated = torch.cuda.max_memory_allocated()
    peak_reserved = torch.cuda.max_memory_reserved()
    if snapshot:
        torch.cuda.memory._dump_snapshot(snapshot)
        torch.cuda.memory._record_memory_history(enabled=None)
    free, total = torch.cuda.mem_get_info()
    outside = max(0, (total - free) - torch.cuda.memory_reserved())
    result = replay(recorder.trace, marks)
    profile = assemble_profile(
        trace=recorder.trace,
        replay=result,
        modules=module_table(
            module,
            recorder.trace,
            live_until(recorder.trace.events, marks.get("backward", 0)),
            trainable_param_bytes(dict(module.named_parameters())),
        ),
        header=dict(
            source="measure",
            model=name,
            device=spec.name,
            device_memory=total,
            precision=precision.name,
            optimizer=optimizer_label(optimizer),
            batch=describe_batch(example),
        ),
        outside_pytorch={"cuda_context_and_libraries": outside},
        warnings=(),
    )
    by_category = dict(profile.by_category)
    # what no tensor accounts for (library workspaces, allocator rounding) is "other"
    by_category[Category.OTHER] += peak_allocated - sum(by_category.values())
    op_costs: list[OpCost] = []
    if op_probe:
        phase = ["forward"]
        probe = OpProbe(lambda: phase[0])
        with probe:
            step(lambda stage: phase.__setitem__(0, stage))
        op_costs = probe.costs
    profile = _with(
        profile,
        peak_allocated=peak_allocated,
        peak_reserved=peak_reserved,
        by_category=by_category,
        timeline=_timeline(readings),
    )
    return MeasuredStep(profile, recorder.trace, marks, readings, op_costs)


def measure(*args: Any, **kwargs: Any) -> MemoryProfile:
    """Measure a training step on the local GPU; arguments as ``measure_step`` documents."""
    return measure_step(*args, **kwargs).profile


def _recorded_step(module: nn.Module, example: Any, opt: Any, step: Callable) -> tuple:
    readings: list[tuple[Phase, int, int, str, int]] = []

    def on_op(func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        readings.append(
            (
                recorder.phase,
                torch.cuda.memory_allocated(),
                torch.cuda.memory_reserved(),
                func.__name__,
                len(recorder.trace.events),
            )
        )

    recorder = MemoryRecorder(on_op=on_op, device_type="cuda")
    marks: dict[str, int] = {}

    def mark(stage: str) -> None:
        marks.setdefault(stage, len(recorder.trace.events))
        if stage == "optimizer0":
            recorder.recategorize([p.grad for p in module.parameters()], Category.GRAD)
        recorder.phase = _PHASES.get(stage, Phase.OPTIMIZER)

    with ModuleTracker() as tracker, recorder:
        recorder.attach(tracker, module)
        recorder.track(list(module.parameters()), Category.PARAM, op="parameter")
        recorder.track(list(module.buffers()), Category.BUFFER, op="buffer")
        recorder.track(
            [t for t in tree_flatten(example)[0] if isinstance(t, torch.Tensor)],
            Category.OTHER,
            op="input",
        )
        if opt is not None:
            state = [
                t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)
            ]
            recorder.track(state, Category.OPTIMIZER, op="optimizer state")
        step(mark)
    recorder.close()
    return recorder, marks, readings


def _timeline(readings: list[tuple[Phase, int, int, str, int]], limit: int = 2000) -> tuple:
    if not readings:
        return ()
    bucket = max(1, -(-len(readings) // limit))
    points = []
    for start in range(0, len(readings), bucket):
        best = max(range(start, min(len(readings), start + bucket)), key=lambda i: readings[i][1])
        phase, allocated, reserved, op, _ = readings[best]
        points.append(
            TimelineEvent(
                index=best,
                phase=phase,
                allocated=allocated,
                reserved=reserved,
                op=op.removesuffix(".default"),
            )
        )
    return tuple(points)


def _with(profile: MemoryProfile, **changes: Any) -> MemoryProfile:
    return dataclasses.replace(profile, **changes)
