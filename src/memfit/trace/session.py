"""One traced step on fake tensors under the target GPU's behaviour, with its bookkeeping.

``traced_step`` runs a ``TrainStep`` (the code ``memfit.apply`` runs for real) on fake CPU
tensors inside every emulation of the device model: CUDA autocast's casts, the CUDA branch of
composites, torch.optim's CUDA implementations and the kernels' workspaces. It records every
allocation (``MemoryRecorder``), the predicted time of every operator (``memfit.cost``) and
the phase boundaries, and records the optimizer's first step (which creates its state) and a
second, steady one.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten

from memfit.cost import Calibration, op_time, overlapped_seconds
from memfit.devices import DeviceSpec
from memfit.errors import MemfitError, UnsupportedModelError
from memfit.profile import Category, Phase
from memfit.step.batch import call_model
from memfit.step.loss import MEAN_OUTPUT_LOSS
from memfit.step.overhead import collecting
from memfit.step.overhead import take as take_overhead
from memfit.trace.cpu_streams import CpuStreams
from memfit.trace.cuda.autocast import cuda_autocast_policy
from memfit.trace.cuda.composites import cuda_composites
from memfit.trace.cuda.stack import CudaStack
from memfit.trace.cuda.workspaces import cuda_workspace_rules
from memfit.trace.events import Trace, local_tensor
from memfit.trace.fakeify import FakeModel
from memfit.trace.hf_masks import gpu_mask_branches
from memfit.trace.linear_bias import linear_bias_in_place
from memfit.trace.low_bit import torchao_stand_in
from memfit.trace.modules import RecomputeSafeModuleTracker as ModuleTracker
from memfit.trace.optimizers import cuda_optimizer_defaults, host_tensors, state_tensors
from memfit.trace.recorder import MemoryRecorder

__all__ = ["TracedOp", "StepRecord", "traced_step", "new_recorder"]

_PHASE_OF_MARK = {"forward": Phase.FORWARD, "backward": Phase.BACKWARD}


@dataclass(frozen=True, slots=True)
class TracedOp:
    """One operator of the traced step: where it ran and its predicted time.

    Attributes:
        stage: the last phase mark: forward, backward, optimizer0, optimizer1, zero_grad.
        seconds: its GPU time (0 for views and allocations).
        host_s: the CPU time to issue it, with what techniques noted for it.
        kind: its class (``memfit.cost.classes.CLASSES``).
        recompute: run again by checkpointing, inside backward.
    """

    stage: str
    module: str
    op: str
    seconds: float
    flops: float
    bytes: int = 0
    rate: float = 0.0
    host_s: float = 0.0
    kind: str = ""
    synchronises: bool = False
    recompute: bool = False
    shape: tuple[int, ...] = ()
    kernels: int = 1
    tensors: int = 0


@dataclass
class StepRecord:
    trace: Trace
    marks: dict[str, int]
    ops: list[TracedOp] = field(default_factory=list)
    grad_bytes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    host_bytes: dict[str, int] = field(default_factory=dict)  # techniques' host memory
    offloaded_params: int = 0  # parameters OffloadOptimizer's host updates
    first_share: float = 0.0  # their share the next forward needs first

    passes: int = 1  # forward-backward passes traced (two when batches accumulate)
    batches_per_update: int = 1

    def stage_s(self, stage: str) -> float:
        """Predicted GPU time of one stage (``"forward"``, ``"backward"``), all micro-batches."""
        return sum(op.seconds for op in self.ops if op.stage == stage) / self.passes

    def step_time_s(self) -> float:
        """Per batch: forward, backward and a steady optimizer step's share (one update every
        ``batches_per_update`` batches), CPU and GPU overlapped: each operator of the traced
        passes counts ``1 / passes``, the rest ``1 / batches_per_update``."""
        return overlapped_seconds(
            (op.host_s * share, op.seconds * share, op.synchronises)
            for op, share in self._per_batch()
        )

    def host_time_s(self) -> float:
        """Per batch, the CPU's time to issue the step (as ``step_time_s`` counts operators)."""
        return sum(op.host_s * share for op, share in self._per_batch())

    def _per_batch(self) -> list[tuple[TracedOp, float]]:
        """The steady step's operators, each with its share of one batch."""
        first_opt_only = "optimizer1" in self.marks
        ops = [op for op in self.ops if not (first_opt_only and op.stage == "optimizer0")]
        if self.passes == 1 and self.batches_per_update == 1:
            return [(op, 1.0) for op in ops]
        return [
            (op, 1 / self.passes if op.stage in _PHASE_OF_MARK else 1 / self.batches_per_update)
            for op in ops
        ]


def new_recorder(device: DeviceSpec, stack: CudaStack) -> MemoryRecorder:
    """A recorder with the device's kernel workspaces, noting the stream of each allocation."""
    recorder = MemoryRecorder(cuda_workspace_rules(device, stack))
    recorder.stream_of = CpuStreams()
    return recorder


def traced_step(
    *,
    fake_mode: FakeTensorMode,
    fake_model: FakeModel,
    batch: Any,
    make_step: Callable[[], Any],
    device: DeviceSpec,
    stack: CudaStack,
    calibration: Calibration,
    recorder: MemoryRecorder | None = None,
    inference: bool = False,
) -> StepRecord:
    """Trace one training step; ``make_step()`` builds the TrainStep inside the fake mode.

    Args:
        recorder: a recorder that already holds what happened before the step (building the
            model on the device), or None for a fresh one.
        inference: trace one forward under ``torch.no_grad()`` instead (the model is already
            in ``eval()``), the output released after it.

    Raises:
        UnsupportedModelError: when the model fails on fake tensors (with its error).
    """
    recorder = recorder or new_recorder(device, stack)
    book = _Bookkeeping(recorder, fake_model, device, calibration)
    recorder.on_op = book.on_op
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with _on_the_target(fake_mode, device, stack, batch) as tracker, recorder, collecting():
            take_overhead()  # nothing noted before the step belongs to it
            _track_existing(recorder, tracker, fake_model, batch)
            step = make_step()
            # techniques may replace parameters' data (OffloadOptimizer's working copies; the
            # float32 weights it frees before the step, with the cache emptied, never count)
            host = getattr(step, "host_optimizer", None)
            if host is not None:
                recorder.forget(host.released())
            recorder.recategorize(fake_model.params.values(), Category.PARAM)
            book.optimizer = step.optimizer
            step.mark = book.mark
            policy = _emulate_cuda_precision(step)
            run = _run_forward if inference else _run_twice_stepping
            try:
                _run_step(run, step, batch, book.mark, policy, book.record)
            except UnsupportedModelError as error:
                raise _with_assumptions(error, recorder.warnings) from error.__cause__
        recorder.close()
    loss_note = [MEAN_OUTPUT_LOSS] if getattr(step, "loss_is_output_mean", False) else []
    book.record.warnings = [*recorder.warnings, *loss_note]
    return book.record


class _Bookkeeping:
    """What the recorder's callbacks keep while the step runs: op times, phase marks."""

    def __init__(
        self,
        recorder: MemoryRecorder,
        fake_model: FakeModel,
        device: DeviceSpec,
        calibration: Calibration,
    ) -> None:
        self.recorder, self.fake_model = recorder, fake_model
        self.device, self.calibration = device, calibration
        self.record = StepRecord(recorder.trace, {})
        self.stage = "setup"
        self.optimizer: torch.optim.Optimizer | None = None  # the step's, once it is built

    def on_op(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """After each operator: its predicted time, with the stage and module it ran in."""
        if func.namespace not in ("aten", "memfit"):
            return  # metadata queries of fake tensors (prim::device): no kernel, no dispatch
        # inside backward, the autograd engine runs with grad mode off; a recomputation
        # (checkpointing) runs forward code with it on
        recompute = self.stage == "backward" and torch.is_grad_enabled()
        stage = "forward" if recompute else self.stage  # recomputation is issued as forward
        cost = op_time(func, args, kwargs, out, self.device, self.calibration, stage)
        self.record.ops.append(
            TracedOp(
                self.stage,
                self.recorder.current_module(),
                cost.op,
                cost.seconds,
                cost.flops,
                cost.bytes,
                cost.rate,
                cost.host_s + self._noted() + self._recomputing(recompute, cost.kind),
                cost.kind,
                cost.synchronises,
                recompute,
                cost.shape,
                cost.kernels,
                cost.tensors,
            )
        )

    def _recomputing(self, recompute: bool, kind: str) -> float:
        """What recomputing an operator adds on the host (``Calibration.recompute_op_s``)."""
        return self.calibration.recompute_op_s if recompute and kind != "none" else 0.0

    def _noted(self) -> float:
        """Host time techniques noted for the operator just run (``memfit.step.overhead``)."""
        noted = take_overhead().items()
        return sum(n * getattr(self.calibration, f"{kind}_s", 0.0) for kind, n in noted)

    def mark(self, name: str) -> None:
        """At a phase boundary: where it falls in the trace, and what its tensors now are."""
        self.stage = name
        self.record.marks.setdefault(name, len(self.recorder.trace.events))
        if name == "optimizer0":
            grads = [p.grad for p in self.fake_model.params.values()]
            self.recorder.recategorize(grads, Category.GRAD)
        if name == "zero_grad" and self.optimizer is not None:
            self._settle_optimizer(self.optimizer)
        self.recorder.phase = _PHASE_OF_MARK.get(name, Phase.OPTIMIZER)

    def _settle_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """At zero_grad: optimizer state recategorised, host step counters out, grad sizes kept."""
        self.recorder.forget(host_tensors(optimizer))
        self.recorder.recategorize(state_tensors(optimizer), Category.OPTIMIZER)
        grads = {n: p.grad for n, p in self.fake_model.params.items() if p.grad is not None}
        self.record.grad_bytes.update(
            {n: local_tensor(g).numel() * g.element_size() for n, g in grads.items()}
        )


@contextlib.contextmanager
def _on_the_target(
    fake_mode: FakeTensorMode, device: DeviceSpec, stack: CudaStack, batch: Any
) -> Iterator[ModuleTracker]:
    """Fake tensors under the target's composites, mask branches and optimizer defaults."""
    with (
        fake_mode,
        ModuleTracker() as tracker,
        cuda_composites(device, stack),
        linear_bias_in_place(),
        gpu_mask_branches(batch),
        cuda_optimizer_defaults(),
        torchao_stand_in(),
    ):
        yield tracker


def _track_existing(
    recorder: MemoryRecorder, tracker: ModuleTracker, fake_model: FakeModel, batch: Any
) -> None:
    """Record what exists before the step: weights, buffers and the batch."""
    recorder.attach(tracker, fake_model.module)
    recorder.track(fake_model.params.values(), Category.PARAM, op="parameter")
    recorder.track(fake_model.buffers.values(), Category.BUFFER, op="buffer")
    recorder.recategorize(fake_model.params.values(), Category.PARAM)
    recorder.recategorize(fake_model.buffers.values(), Category.BUFFER)
    tensors = [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)]
    recorder.track(tensors, Category.OTHER, op="input")


def _emulate_cuda_precision(step: Any) -> contextlib.AbstractContextManager[None]:
    """Give the step CPU autocast and a grad scale as CUDA would; return the cast policy."""
    dtype = step.precision.autocast_dtype
    policy: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if dtype is not None:
        cache = not step.lean_autocast
        step.autocast = lambda: torch.autocast("cpu", dtype=dtype, cache_enabled=cache)
        policy = cuda_autocast_policy(dtype)
    if step.precision.grad_scaler:
        step.grad_scale = torch.full((), 65536.0)
    return policy


def _with_assumptions(error: UnsupportedModelError, assumed: list[str]) -> UnsupportedModelError:
    """The error, with what memfit assumed before it (a value read as 1 or True sends the model
    down a branch its real run may not take: Longformer's global attention)."""
    if not assumed:
        return error
    notes = "; ".join(assumed)
    return UnsupportedModelError(
        f"{error}. Before it, memfit assumed what fake tensors cannot know, which may have sent "
        f"the model down a branch its real run does not take: {notes}"
    )


def _run_step(
    run: Callable[[Any, Any, Callable[[str], None], StepRecord], None],
    step: Any,
    batch: Any,
    mark: Callable[[str], None],
    policy: contextlib.AbstractContextManager[None],
    record: StepRecord,
) -> None:
    """``run`` under CUDA's cast policy; the model's own errors as UnsupportedModelError."""
    try:
        with policy:
            run(step, batch, mark, record)
    except MemfitError:
        raise
    except Exception as error:  # the user's model: report it, whatever it raised
        what = "training step" if getattr(step, "optimizer", None) is not None else "forward"
        raise UnsupportedModelError(
            f"the {what} failed on fake tensors with {type(error).__name__}: {error}"
        ) from error


def _run_forward(step: Any, batch: Any, mark: Callable[[str], None], record: StepRecord) -> None:
    """One forward as inference runs it: no graph, the output dropped after autocast exits."""
    mark("forward")
    with torch.no_grad(), step.autocast():
        inputs = step.forward_batch(batch) if step.forward_batch else batch
        if step.forward is not None:
            output = step.forward(step.model, inputs)
        else:
            output = call_model(step.model, inputs)
    del output
    mark("end")


def _run_twice_stepping(
    step: Any, batch: Any, mark: Callable[[str], None], record: StepRecord
) -> None:
    """Forward and backward, then the optimizer's first step and a steady second one.

    A step that accumulates several batches per update runs a second forward and backward
    first: from the second batch on, the earlier batches' gradients are alive throughout.
    """
    step.accumulate(batch)
    record.batches_per_update = step.batches_per_update
    if step.batches_per_update > 1:
        step.accumulate(batch)
        record.passes = 2
    if step.optimizer is not None:
        mark("optimizer0")
        step.update()
        mark("optimizer1")
        step.update()
        mark("zero_grad")
        step.optimizer.zero_grad(set_to_none=True)
    mark("end")
