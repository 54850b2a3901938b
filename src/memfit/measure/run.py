"""``memfit.measure``: the same training step run for real on the local GPU.

It returns the MemoryProfile schema that ``memfit.estimate`` predicts, so the two compare module
by module: the same step function (``memfit.step.loss``) and the same recorder run on real CUDA
tensors; the peaks come from PyTorch's own counters (``max_memory_allocated/reserved``) over
steady-state steps after warm-up.
"""

from __future__ import annotations

import dataclasses
import gc
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from memfit.devices import get_device, local_device
from memfit.errors import DeviceError, InvalidInputError
from memfit.measure.op_probe import OpCost, OpProbe
from memfit.measure.readings import Reading, stack_warnings, timeline
from memfit.profile import Category, MemoryProfile, Phase
from memfit.step.batch import describe_batch
from memfit.step.kept_state import KeptState
from memfit.step.loss import LossFn
from memfit.step.precision import Precision
from memfit.step.train_step import TrainStep
from memfit.trace.assemble import assemble_profile, module_table, trainable_param_bytes
from memfit.trace.cuda.stack import minor_version
from memfit.trace.events import Trace, live_until
from memfit.trace.inputs import resolve
from memfit.trace.modules import RecomputeSafeModuleTracker as ModuleTracker
from memfit.trace.optimizers import make_optimizer, optimizer_label
from memfit.trace.recorder import MemoryRecorder
from memfit.trace.replay import replay
from memfit.trace.settings import StepSettings
from memfit.trace.versions import gpu_versions, software_versions

__all__ = ["measure", "measure_step", "MeasuredStep"]


@dataclass
class MeasuredStep:
    """A measured step: the profile, the recorded trace of its last step, per-op readings."""

    profile: MemoryProfile
    trace: Trace
    marks: dict[str, int]
    readings: list[Reading]
    op_costs: list[OpCost] = field(default_factory=list)


_PHASES = {"forward": Phase.FORWARD, "backward": Phase.BACKWARD}


def _no_mark(stage: str) -> None:
    return None


@dataclass(frozen=True)
class _Schedule:
    """The steps run: ``warmup`` unmeasured, then ``steps`` measured, the last one recorded."""

    warmup: int
    steps: int
    snapshot: str | None  # where to dump a memory snapshot of the measured steps


@dataclass
class _GpuStep:
    """The model, its example batch and its TrainStep, on the GPU."""

    module: nn.Module
    example: Any
    optimizer: torch.optim.Optimizer | None
    train_step: TrainStep

    def run(self, mark: Callable[[str], None] = _no_mark) -> None:
        """One training step, calling ``mark`` at each phase boundary."""
        self.train_step.mark = mark
        self.train_step.step(self.example)


@dataclass
class _Recorded:
    """The last measured step: its trace, phase marks and per-operator readings."""

    trace: Trace
    marks: dict[str, int]
    readings: list[Reading]


@dataclass(frozen=True)
class _Peaks:
    """What PyTorch's counters and ``cudaMemGetInfo`` report over the measured steps."""

    allocated: int
    reserved: int
    device_memory: int
    outside_pytorch: int  # the process's use beyond PyTorch's allocator


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

    The steps train the module you pass, since the memory measured is that of your module (a
    copy would add its own weights to what is measured): it is moved to the GPU, cast for
    ``precision="bf16"``, and stepped by an optimizer of its own. Afterwards, whether the
    measurement returned or failed (an error, an out-of-memory error, KeyboardInterrupt), the
    module is put back exactly as it was (``memfit.step.kept_state``): the same parameter and
    buffer objects with their values, dtypes, devices, ``requires_grad`` and gradients, its
    train/eval modes, and the random-number generators; an optimizer of yours that holds its
    parameters stays valid and was never stepped. Weights that were already on the GPU are kept
    in host memory meanwhile (their size); weights elsewhere cost nothing to keep.

    Args:
        model: an ``nn.Module`` (run on the GPU, then put back), a builder (built on the GPU)
            or a zoo name.
        batch: as for ``memfit.estimate``; tensors are copied to the GPU once.
        loss_fn, forward, optimizer, precision, batch_size, seq_len: as for
            ``memfit.estimate``.
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
        * Tensors your process already holds on the GPU (another model, your optimizer's
          state) count in the measured peaks.
    """
    _check_can_measure(warmup, steps)
    settings = StepSettings(
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        device=local_device(),
        batch_size=batch_size,
        seq_len=seq_len,
    )
    precision = Precision.parse(settings.precision)
    name, model, batch = resolve(model, batch, settings.batch_size, settings.seq_len)
    device = _run_device()
    kept = KeptState(model if isinstance(model, nn.Module) else None, moved_to=device)
    try:
        return _measured(
            name, model, batch, settings, precision, _Schedule(warmup, steps, snapshot), op_probe
        )
    except torch.OutOfMemoryError as error:
        # the failed step's tensors, held by the traceback's frames, freed before the model
        # is put back (which may need device memory); the frames' lines stay in the traceback
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        kept.restore()


def _measured(
    name: str,
    model: nn.Module | Callable[[], nn.Module],
    batch: Any,
    settings: StepSettings,
    precision: Precision,
    schedule: _Schedule,
    op_probe: bool,
) -> MeasuredStep:
    """The measurement itself (changes the model; ``measure_step`` puts it back)."""
    gpu = _build(model, batch, settings, precision)
    recorded, peaks = _run(gpu, schedule)
    profile = _profile(name, gpu, recorded, peaks, settings, precision)
    op_costs = _probe_ops(gpu) if op_probe else []
    return MeasuredStep(profile, recorded.trace, recorded.marks, recorded.readings, op_costs)


def measure(*args: Any, **kwargs: Any) -> MemoryProfile:
    """Measure a training step on the local GPU; arguments as ``measure_step`` documents."""
    return measure_step(*args, **kwargs).profile


def _check_can_measure(warmup: int, steps: int) -> None:
    """Raise unless there is a GPU and at least one warm-up and one measured step."""
    if not torch.cuda.is_available():
        raise DeviceError(
            "memfit.measure runs the step on a GPU and torch sees none; use memfit.estimate "
            "to predict it without one"
        )
    if warmup < 1 or steps < 1:
        raise InvalidInputError(f"warmup={warmup} and steps={steps} must both be at least 1")


def _run_device() -> torch.device:
    """The device the step is measured on: the current GPU."""
    return torch.device("cuda", torch.cuda.current_device())


def _build(
    model: nn.Module | Callable[[], nn.Module],
    batch: Any,
    settings: StepSettings,
    precision: Precision,
    device: torch.device | None = None,
) -> _GpuStep:
    """The model and the batch on the GPU (or ``device``), with their optimizer and TrainStep."""
    cuda = device or _run_device()
    # blocks cached by earlier work in this process would count in this step's reserved peak
    gc.collect()
    if cuda.type == "cuda":
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
    optimizer = make_optimizer(settings.optimizer, trainable)
    train_step = TrainStep(
        module, optimizer, loss_fn=settings.loss_fn, forward=settings.forward, precision=precision
    )
    return _GpuStep(module, example, optimizer, train_step)


def _run(gpu: _GpuStep, schedule: _Schedule) -> tuple[_Recorded, _Peaks]:
    """Warm-up steps, then the measured ones under fresh peak counters, the last recorded."""
    for _ in range(schedule.warmup):
        gpu.run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    if schedule.snapshot:
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)
    for _ in range(schedule.steps - 1):
        gpu.run()
    recorded = _recorded_step(gpu)
    torch.cuda.synchronize()
    peak_allocated = torch.cuda.max_memory_allocated()
    peak_reserved = torch.cuda.max_memory_reserved()
    if schedule.snapshot:
        torch.cuda.memory._dump_snapshot(schedule.snapshot)
        torch.cuda.memory._record_memory_history(enabled=None)
    free, total = torch.cuda.mem_get_info()
    outside = max(0, (total - free) - torch.cuda.memory_reserved())
    return recorded, _Peaks(peak_allocated, peak_reserved, total, outside)


def _recorded_step(gpu: _GpuStep) -> _Recorded:
    """One step with every allocation recorded, and the GPU's counters after each operator."""
    readings: list[Reading] = []

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
            recorder.recategorize([p.grad for p in gpu.module.parameters()], Category.GRAD)
        recorder.phase = _PHASES.get(stage, Phase.OPTIMIZER)

    with ModuleTracker() as tracker, recorder:
        recorder.attach(tracker, gpu.module)
        _track_existing(recorder, gpu)
        gpu.run(mark)
    recorder.close()
    return _Recorded(recorder.trace, marks, readings)


def _track_existing(recorder: MemoryRecorder, gpu: _GpuStep) -> None:
    """Record what exists before the step: weights, buffers, the batch, optimizer state."""
    module = gpu.module
    recorder.track(list(module.parameters()), Category.PARAM, op="parameter")
    recorder.track(list(module.buffers()), Category.BUFFER, op="buffer")
    recorder.track(
        [t for t in tree_flatten(gpu.example)[0] if isinstance(t, torch.Tensor)],
        Category.OTHER,
        op="input",
    )
    if gpu.optimizer is not None:
        state = [
            t
            for s in gpu.optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        ]
        recorder.track(state, Category.OPTIMIZER, op="optimizer state")


def _profile(
    name: str,
    gpu: _GpuStep,
    recorded: _Recorded,
    peaks: _Peaks,
    settings: StepSettings,
    precision: Precision,
) -> MemoryProfile:
    """The recorded step as a MemoryProfile, with the peaks PyTorch's counters measured."""
    trace, marks = recorded.trace, recorded.marks
    profile = assemble_profile(
        trace=trace,
        replay=replay(trace, marks),
        modules=module_table(
            gpu.module,
            trace,
            live_until(trace.events, marks.get("backward", 0)),
            trainable_param_bytes(dict(gpu.module.named_parameters())),
        ),
        header=dict(
            source="measure",
            model=name,
            device=get_device(settings.device).name,
            device_memory=peaks.device_memory,
            precision=precision.name,
            optimizer=optimizer_label(settings.optimizer),
            batch=describe_batch(gpu.example),
        ),
        outside_pytorch={"cuda_context_and_libraries": peaks.outside_pytorch},
        warnings=(),
    )
    versions = software_versions(gpu.module) | gpu_versions()
    ran = {
        "torch": minor_version(versions["torch"]),
        "cudnn": minor_version(versions.get("cudnn", "")),
    }
    by_category = dict(profile.by_category)
    # what no tensor accounts for (library workspaces, allocator rounding) is "other"
    by_category[Category.OTHER] += peaks.allocated - sum(by_category.values())
    return dataclasses.replace(
        profile,
        peak_allocated=peaks.allocated,
        peak_reserved=peaks.reserved,
        by_category=by_category,
        timeline=timeline(recorded.readings),
        versions=versions,
        target_stack=ran,
        warnings=stack_warnings(ran),
    )


def _probe_ops(gpu: _GpuStep) -> list[OpCost]:
    """One more step under an OpProbe: each operator's memory beyond its outputs."""
    phase = ["forward"]
    probe = OpProbe(lambda: phase[0])
    with probe:
        gpu.run(lambda stage: phase.__setitem__(0, stage))
    return probe.costs
