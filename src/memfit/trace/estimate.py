"""``memfit.estimate``: the GPU memory of a training step, predicted on any machine.

The step runs once on fake tensors (``FakeTensorMode``: shapes and dtypes, no memory) under a
model of the target GPU's behaviour: CUDA autocast's cast policy, the CUDA branch of composites
(fused attention kernels, fused dropout and RMSNorm), the optimizer implementations torch picks
for CUDA, and the workspaces kernels allocate. Every allocation and free is recorded, then
replayed through a simulation of PyTorch's CUDA caching allocator to predict what
``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()`` report in steady state.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.devices import DEFAULT_DEVICE, DeviceSpec, HostSpec, get_device
from memfit.errors import InvalidInputError
from memfit.gc_threshold import fewer_collections
from memfit.profile import MemoryProfile
from memfit.step.batch import describe_batch
from memfit.step.in_force import techniques_in_force
from memfit.step.loss import LossFn
from memfit.step.precision import Precision
from memfit.step.undo import applied
from memfit.structure.token_inputs import check_token_inputs
from memfit.technique_rules import check_combination, check_step_options
from memfit.trace.alloc_conf import allocator_from_environment
from memfit.trace.allocator import AllocatorSettings
from memfit.trace.cuda.stack import DEFAULT_STACK, CudaStack
from memfit.trace.events import Trace
from memfit.trace.fakeify import FakeModel
from memfit.trace.gpus import sharded_ranks, with_gpus
from memfit.trace.inputs import SpecBatch, resolve
from memfit.trace.optimizers import optimizer_label
from memfit.trace.session import StepRecord, new_recorder
from memfit.trace.settings import StepSettings
from memfit.trace.step_phases import build_fake, profile_of, trace_fake_step
from memfit.trace.step_time import host_warnings, step_time, target_host_from, with_communication
from memfit.trace.versions import software_versions, version_warnings
from memfit.trace.watchdog import DEFAULT_TIMEOUT_S, Watchdog

__all__ = ["estimate", "trace_step", "with_gpus", "StepTrace", "StepSettings"]

Progress = Callable[[str], None]


@dataclass
class StepTrace:
    """A traced step: the profile and what it was made of (for the planner and diagnostics)."""

    profile: MemoryProfile
    trace: Trace
    marks: dict[str, int]
    model: FakeModel
    record: StepRecord
    sharded: Any = None  # memfit.trace.sharding.ShardedTracing of a sharded step


def estimate(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    *,
    loss_fn: LossFn | None = None,
    forward: Callable[[Any, Any], Any] | None = None,
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = "adamw",
    precision: str | Precision = "bf16-mixed",
    device: str | DeviceSpec = DEFAULT_DEVICE,
    plan: Any = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    stack: CudaStack = DEFAULT_STACK,
    allocator: AllocatorSettings | None = None,
    mode: str = "train",
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    host_memory: str | int | None = None,
    host: HostSpec | None = None,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    gpus: int | None = None,
    progress: Progress | None = None,
) -> MemoryProfile:
    """Predict the GPU memory of one steady-state training (or inference) step, without a GPU.

    Args:
        model: an ``nn.Module`` (left untouched), a zero-argument builder (called on fake
            tensors: nothing is allocated), or a zoo name such as ``"gpt2"``.
        batch: example inputs: a tensor (``model(batch)``), a dict (``model(**batch)``) or a
            tuple (``model(*batch)``), real or fake; an input spec string; or None with a zoo
            name for its default batch (``batch_size``/``seq_len`` override its size).
        loss_fn: ``(output, batch) -> scalar loss``; default ``output.loss``, else the mean of
            the output in float32.
        forward: ``(model, batch) -> output`` when the model is not called as ``model(batch)``
            / ``model(**batch)`` / ``model(*batch)``, e.g. ``lambda m, b: m(b[0])``.
        optimizer: ``"adamw"``, ``"adamw-fused"``, ``"adam"``, ``"adam-fused"``, ``"sgd"``, a
            factory ``params -> Optimizer``, or None for forward and backward only.
        precision: ``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"`` or ``"bf16"`` (pure).
        device: a name from ``memfit devices`` or ``"cuda"`` for the local GPU.
        plan: a ``memfit.Plan`` (or a sequence of techniques) to predict with it in force.
        stack: the target's software (torch release, cuDNN), which decides some kernels:
            ``memfit.stack_for("2.13")``; default torch 2.11 + cuDNN 9.19, where the device
            model was measured. The profile records it (``target_stack``) and what traced it
            (``versions``), and warns when this machine's torch release differs from it.
        allocator: ``PYTORCH_CUDA_ALLOC_CONF`` options to simulate; default: what this
            process's environment sets (``PYTORCH_ALLOC_CONF`` or ``PYTORCH_CUDA_ALLOC_CONF``:
            expandable segments, ``max_split_size_mb``, ``roundup_power2_divisions``; other
            options are named in the profile's warnings), else PyTorch's default.
        mode: ``"train"``, or ``"inference"``: the model in ``eval()``, one forward under
            ``torch.no_grad()`` (``torch.inference_mode()`` allocates the same, or less where
            autocast's weight cache matters: a strided batch into a 16-bit linear is folded
            into one contiguous copy under ``no_grad`` only), the output released after it;
            no loss, no backward, no optimizer (``optimizer`` is ignored).
        timeout_s: give up with an UnsupportedModelError naming where the model was after
            this many seconds of building and tracing (a model that loops on tensor values,
            which fake tensors do not have); None for no limit.
        host_memory: the target host's RAM (``"128GiB"``), for plans that offload; default
            this machine's.
        host: the target host in full (``memfit.devices.HostSpec``: memory, cores, CPU Adam
            rate); overrides ``host_memory``.
        clip_grad_norm: the step clips gradients to this global norm before each update.
        accumulate: the step accumulates the gradients of this many batches per update (the
            gradients of earlier batches are alive through the later ones' forward).
        gpus: predict one rank of a job of ``gpus`` GPUs sharded with FSDP2: the plan's
            ``Sharding`` for that many GPUs, or, when the plan has none, one ``fully_shard``
            unit per repeated block; ``batch`` is each rank's batch. None: as the plan says.
        progress: called with a short message at each stage (the CLI shows it).

    Returns:
        The predicted MemoryProfile (``source="estimate"``), with a predicted step time (per
        batch: with ``accumulate=n``, one n-th of the update) and, for plans that offload, the
        host memory they hold (``host_bytes``, ``host_peak``).

    Raises:
        MemfitError: for unknown names, malformed inputs, a builder that raises, a batch that
            does not fit the model, a loss that is not a scalar, a trace that stalls.

    Known limitations:
        * cuDNN convolution workspaces are modelled by class of call, read from one stack
          (H200, cuDNN 9.19; ``memfit.trace.cuda.convolution``): allocated within 0.6% on the
          validation zoo's CNNs; reserved within 3.3% in training
          (bench/results/validation_compare.md).
        * Data-dependent operators (``nonzero``, ``.item()``) get an upper bound or an assumed
          value, operators with no fake implementation an output shaped like their input, and
          Triton kernels are not run (their outputs are allocated by torch): each is named in
          the profile's warnings with the bytes assumed.
        * Distributed training other than FSDP2 sharding (``Sharding``) is not modelled;
          sharded steps are traced as one rank (``memfit.trace.sharding``).
    """
    settings = StepSettings(
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        device=device,
        stack=stack,
        allocator=allocator,
        batch_size=batch_size,
        seq_len=seq_len,
        mode=mode,
        timeout_s=timeout_s,
        host=host or target_host_from(host_memory, device),
        clip_grad_norm=clip_grad_norm,
        accumulate=accumulate,
    )
    if gpus is not None:
        if settings.inference:
            raise InvalidInputError(
                f"gpus={gpus} shards a training step with FSDP2; mode='inference' predicts one "
                f"GPU's forward: leave gpus out"
            )
        plan = with_gpus(plan, gpus, model)
    return trace_step(model, batch, settings, plan=plan, progress=progress).profile


@fewer_collections()
def trace_step(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    settings: StepSettings | None = None,
    *,
    plan: Any = None,
    progress: Progress | None = None,
    **options: Any,
) -> StepTrace:
    """``estimate``, returning the recorded trace with the profile (planner, diagnostics).

    Args:
        settings: how the step runs; ``options`` replace some of them by keyword
            (``trace_step(model, batch, precision="fp32")``).
    """
    settings = (settings or StepSettings()).with_options(**options)
    report = progress or (lambda message: None)
    spec = get_device(settings.device)
    techniques = techniques_in_force(plan)
    if settings.inference and techniques.label:
        raise InvalidInputError(
            f"a plan ({techniques.label}) was given with mode='inference'; plans are for "
            f"training steps: estimate inference without one"
        )
    precision = Precision.parse(techniques.precision or settings.precision)
    allocator, allocator_warnings = (
        (settings.allocator, ()) if settings.allocator else allocator_from_environment()
    )
    if techniques.expandable_segments:
        allocator = dataclasses.replace(allocator, expandable_segments=True)
    settings = settings.with_options(allocator=allocator)
    check_combination(techniques.techniques)
    check_step_options(
        techniques.techniques,
        clip_grad_norm=settings.clip_grad_norm,
        accumulate=settings.accumulate,
        grad_scaler=precision.grad_scaler,
    )
    name, model, batch = resolve(model, batch, settings.batch_size, settings.seq_len)
    if isinstance(model, nn.Module) and applied(model) and techniques.techniques:
        raise InvalidInputError(
            f"memfit's techniques are already applied to this {type(model).__name__} (by "
            f"memfit.apply); to predict another plan, undo them first with step.undo() or "
            f"memfit.undo(model), or estimate without plan= to predict the model as it is"
        )
    started = time.perf_counter()
    fake_mode = FakeTensorMode()
    report(f"building {name} on fake tensors")
    recorder = new_recorder(spec, settings.stack)
    declared = batch.bounds() if isinstance(batch, SpecBatch) else None
    with sharded_ranks(techniques, recorder) as sharded:
        # sharded: each rank builds the model on the CPU or the meta device and fully_shard
        # moves its shards to the GPU; one GPU: the model is built on the GPU
        building = recorder if sharded is None else None
        with Watchdog(
            settings.timeout_s,
            "building the model",
            recorder.recent_ops,
            request_stop=recorder.request_stop,
        ):
            fake_model, example, rebuilt = build_fake(
                model,
                batch,
                fake_mode,
                building,
                precision,
                lambda: new_recorder(spec, settings.stack),
            )
        recorder = rebuilt or recorder  # a builder that read values: a fresh recorder
        # a batch given as tensors shows its ids; a made one (zoo, spec) its shapes and bounds
        check_token_inputs(fake_model.module, example if callable(batch) else batch, declared)
        report(
            "tracing forward"
            if settings.inference
            else "tracing forward, backward and optimizer step"
        )
        if sharded is not None:
            fake_model = sharded.own_copy(fake_model)
        with Watchdog(
            settings.timeout_s,
            "tracing the step",
            recorder.recent_ops,
            recorder.current_module,
            recorder.request_stop,
        ):
            record = trace_fake_step(
                fake_model, example, fake_mode, recorder, techniques, settings, precision, sharded
            )
    report("simulating the CUDA caching allocator")
    header = dict(
        source="estimate",
        model=name,
        device=spec.name,
        device_memory=spec.memory_bytes,
        precision=precision.name,
        optimizer=None if settings.inference else optimizer_label(settings.optimizer),
        batch=describe_batch(example),
    )
    host_bytes = 0
    if sharded is not None and techniques.sharding is not None and techniques.sharding.offload:
        record.trace, host_bytes = sharded.host_resident(record.trace)
    profile = profile_of(record, fake_model, settings, spec, header)
    label = "inference (eval, no_grad)" if settings.inference else techniques.label
    versions = software_versions(fake_model.module)
    profile = dataclasses.replace(
        profile,
        plan=label,
        step_time_s=step_time(record, spec, settings, techniques.micro_batches),
        host_bytes=dict(record.host_bytes),
        versions=versions,
        target_stack=settings.stack.to_dict(),
        warnings=(
            *version_warnings(versions, settings.stack),
            *allocator_warnings,
            *profile.warnings,
            *host_warnings(record.host_bytes, settings),
        ),
    )
    if sharded is not None:
        profile = with_communication(profile, sharded, techniques.sharding, spec, host_bytes)
    report(f"done in {time.perf_counter() - started:.1f} s")
    return StepTrace(profile, record.trace, record.marks, fake_model, record, sharded)
