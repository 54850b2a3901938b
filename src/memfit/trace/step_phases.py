"""The three phases of one estimate: the model and batch on fake tensors, one step traced on
them with the plan's techniques applied, and the trace replayed through the allocator into a
MemoryProfile. ``memfit.trace.estimate.trace_step`` runs them under its watchdogs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.cost import load_calibration
from memfit.devices import DeviceSpec, get_device
from memfit.profile import MemoryProfile
from memfit.step.in_force import InForce
from memfit.step.precision import Precision
from memfit.step.train_step import TrainStep
from memfit.step.undo import run_in_reverse
from memfit.trace.allocator import DEFAULT_SETTINGS
from memfit.trace.assemble import assemble_profile, module_table, trainable_param_bytes
from memfit.trace.events import live_until
from memfit.trace.fake_hazards import fake_hazards_neutralised, scripted_functions_in_python
from memfit.trace.fakeify import FakeModel, evaluating, prepare_batch, prepare_model
from memfit.trace.optimizers import make_optimizer, watch_gradients
from memfit.trace.recorder import MemoryRecorder, ValueReadWhileBuilding
from memfit.trace.replay import replay
from memfit.trace.session import StepRecord, traced_step
from memfit.trace.settings import StepSettings
from memfit.trace.triton_kernels import triton_launches_skipped

__all__ = ["build_fake", "profile_of", "trace_fake_step"]


def build_fake(
    model: nn.Module | Callable[[], nn.Module],
    batch: Any,
    fake_mode: FakeTensorMode,
    recorder: MemoryRecorder | None,
    precision: Precision,
    fresh_recorder: Callable[[], MemoryRecorder],
) -> tuple[FakeModel, Any, MemoryRecorder | None]:
    """The model and the example batch on fake tensors, and the recorder of the build.

    A builder builds on the device, as ``with torch.device("cuda"): model = build()`` does:
    its temporaries (weights replaced when tying, say) leave cached blocks behind, so
    ``recorder`` records it (None: unrecorded, as a sharded rank builds on the CPU). A builder
    that reads a tensor value is built again with real values
    (``prepare_model(real_values=True)``), unrecorded, and the step gets a fresh recorder.
    """
    dtype = precision.param_dtype
    with fake_hazards_neutralised():
        if isinstance(model, nn.Module) or recorder is None:
            fake_model = prepare_model(model, fake_mode, param_dtype=dtype)
        else:
            try:
                with recorder, recorder.reading_no_values():
                    fake_model = prepare_model(model, fake_mode, param_dtype=dtype)
            except ValueReadWhileBuilding:
                recorder.close()
                recorder = fresh_recorder()
                fake_model = prepare_model(model, fake_mode, param_dtype=dtype, real_values=True)
    with fake_mode, torch.device("cpu"):
        example = batch() if callable(batch) else batch
    return fake_model, prepare_batch(example, fake_mode), recorder


def trace_fake_step(
    fake_model: FakeModel,
    example: Any,
    fake_mode: FakeTensorMode,
    recorder: MemoryRecorder,
    techniques: InForce,
    settings: StepSettings,
    precision: Precision,
    sharded: Any = None,
) -> StepRecord:
    """One step with the plan's techniques applied to the fake model, recorded; ``sharded``:
    the FSDP2 bookkeeping of a sharded plan (``memfit.trace.sharding.ShardedTracing``)."""
    spec = get_device(settings.device)
    undos: list[Callable[[], None]] = []  # what changed the fake optimizer and parameters
    applied = techniques.applied_to(
        fake_model.module, fake_mode, precision.name, loss_fn=settings.loss_fn
    )
    with (
        fake_model.swapped(),
        fake_hazards_neutralised(),
        scripted_functions_in_python(fake_model.module),
        evaluating(fake_model.module) if settings.inference else contextlib.nullcontext(),
        triton_launches_skipped() as skipped,
        applied as context,
    ):
        if sharded is not None:  # fully_shard replaced the parameters by DTensors
            fake_model.params = dict(fake_model.module.named_parameters())
            fake_model.buffers = dict(fake_model.module.named_buffers())

        def make_step() -> TrainStep:
            optimizer = None
            if not settings.inference:
                params = fake_model.trainable()
                if sharded is not None:
                    params = sharded.local_params(params)
                optimizer = make_optimizer(settings.optimizer, params)
                if context.optimizer_in_backward and optimizer is not None:
                    # before the update's hooks: each gradient is counted as one, then freed
                    undos.append(watch_gradients(fake_model.params, recorder))
                undos.append(context.change_optimizer(optimizer))
                if sharded is not None and optimizer is not None:
                    sharded.attach(optimizer)
            return TrainStep(
                fake_model,
                optimizer,
                loss_fn=context.loss_fn,
                forward=settings.forward,
                precision=precision,
                micro_batches=techniques.micro_batches,
                device_type="fake",
                forward_batch=context.forward_batch,
                lean_autocast=techniques.lean_autocast,
                recompute_products=context.recompute_products,
                host_optimizer=context.host_optimizer,
                clip_grad_norm=settings.clip_grad_norm,
                accumulate=settings.accumulate,
                optimizer_in_backward=context.optimizer_in_backward,
            )

        try:
            with sharded.hooks() if sharded is not None else contextlib.nullcontext():
                record = traced_step(
                    fake_mode=fake_mode,
                    fake_model=fake_model,
                    batch=example,
                    make_step=make_step,
                    device=spec,
                    stack=settings.stack,
                    calibration=load_calibration(spec),
                    recorder=recorder,
                    inference=settings.inference,
                )
            record.warnings = [*record.warnings, *skipped.messages()]
            record.host_bytes = context.host_bytes(techniques.micro_batches)
            if context.host_optimizer is not None:
                record.offloaded_params = context.host_optimizer.offloaded_params()
                record.first_share = context.host_optimizer.first_share()
            return record
        finally:
            with fake_mode:
                run_in_reverse(undos)


def profile_of(
    record: StepRecord,
    fake_model: FakeModel,
    settings: StepSettings,
    spec: DeviceSpec,
    header: dict[str, Any],
) -> MemoryProfile:
    """The recorded step replayed through the allocator, as a MemoryProfile."""
    result = replay(record.trace, record.marks, settings.allocator or DEFAULT_SETTINGS)
    live_after_forward = live_until(record.trace.events, record.marks.get("backward", 0))
    grads: dict[str, int] = {}
    if not settings.inference:
        grads = record.grad_bytes or trainable_param_bytes(fake_model.params)
    return assemble_profile(
        trace=record.trace,
        replay=result,
        modules=module_table(fake_model.module, record.trace, live_after_forward, grads),
        header=header,
        outside_pytorch={"cuda_context": spec.cuda_context_bytes},
        warnings=tuple(
            _device_warnings(spec, Precision.parse(header["precision"])) + record.warnings
        ),
    )


def _device_warnings(spec: DeviceSpec, precision: Precision) -> list[str]:
    if torch.bfloat16 in (precision.autocast_dtype, precision.param_dtype):
        if not spec.supports_bf16:
            return [
                f"{spec.display_name} ({spec.arch}) has no bf16 tensor cores; bf16 runs "
                f"emulated and slowly there. Consider precision='fp16-mixed'."
            ]
    return []
