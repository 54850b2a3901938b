"""``memfit.estimate``: the GPU memory of a training step, predicted on any machine.

The step runs once on fake tensors (``FakeTensorMode``: shapes and dtypes, no memory) under a
model of the target GPU's behaviour: CUDA autocast's cast policy, the CUDA branch of composites
(fused attention kernels, fused dropout and RMSNorm), the optimizer implementations torch picks
for CUDA, and the workspaces kernels allocate. Every allocation and free is recorded, then
replayed through a simulation of PyTorch's CUDA caching allocator to predict what
``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()`` report in steady state.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.devices import DeviceSpec, get_device
from memfit.errors import InvalidInputError
from memfit.profile import MemoryProfile
from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings
from memfit.trace.assemble import assemble_profile, module_table
from memfit.trace.cuda.stack import DEFAULT_STACK, CudaStack
from memfit.trace.fakeify import FakeModel, prepare_batch, prepare_model
from memfit.trace.inputs import describe_batch, make_inputs, parse_input_spec
from memfit.trace.optimizers import make_optimizer, optimizer_label
from memfit.trace.precision import Precision
from memfit.trace.recorder import _Trace
from memfit.trace.replay import replay
from memfit.trace.session import StepRecord, new_recorder, traced_step
from memfit.trace.step import LossFn

__all__ = ["estimate", "trace_step", "StepTrace"]


@dataclass
class StepTrace:
    """A traced step: the profile and what it was made of (for the planner and diagnostics)."""

    profile: MemoryProfile
    trace: _Trace
    marks: dict[str, int]
    model: FakeModel
    record: StepRecord


def _resolve(
    model: Any, batch: Any, batch_size: int | None, seq_len: int | None
) -> tuple[str, nn.Module | Callable[[], nn.Module], Any]:
    """Zoo names become a builder and (without a batch) the zoo's example batch."""
    name = None
    if isinstance(model, str):
        from memfit import zoo

        entry = zoo.get(model)
        name, model = entry.name, entry.build
        if batch is None:
            batch = lambda: entry.make_batch(batch_size, seq_len)  # noqa: E731
    if batch is None:
        raise InvalidInputError(
            "no batch given; pass example inputs (a tensor, dict or tuple), an input spec such "
            "as 'input_ids=int64[8,1024]<50257', or a zoo model name for its default batch"
        )
    if isinstance(batch, str):
        specs = parse_input_spec(batch)
        batch = lambda: make_inputs(specs)  # noqa: E731
    if name is None:
        name = getattr(model, "__name__", None) if not isinstance(model, nn.Module) else None
        name = name or type(model).__name__
    return name, model, batch


def estimate(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    *,
    loss_fn: LossFn | None = None,
    forward: Callable[[Any, Any], Any] | None = None,
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = "adamw",
    precision: str | Precision = "bf16-mixed",
    device: str | DeviceSpec = "h100-80gb",
    plan: Any = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    stack: CudaStack = DEFAULT_STACK,
    allocator: AllocatorSettings = DEFAULT_SETTINGS,
    progress: Callable[[str], None] | None = None,
) -> MemoryProfile:
    """Predict the GPU memory of one steady-state training step, without a GPU.

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
        stack: the target's software (cuDNN version...), which decides some kernels.
        allocator: ``PYTORCH_CUDA_ALLOC_CONF`` options to simulate.
        progress: called with a short message at each stage (the CLI shows it).

    Returns:
        The predicted MemoryProfile (``source="estimate"``), with a predicted step time.

    Raises:
        MemfitError: for unknown names, malformed inputs, a builder that raises, a batch that
            does not fit the model, a loss that is not a scalar.

    Known limitations:
        * cuDNN convolution workspaces are not modelled: cuDNN picks algorithms by heuristics
          that need the GPU (about 4% of reserved memory on ResNet-50 in bf16, see
          bench/results).
        * Data-dependent operators (``nonzero``, ``.item()``) get an upper bound or an assumed
          value, named in the profile's warnings.
        * One GPU, one stream; distributed training is not modelled.
    """
    return trace_step(
        model,
        batch,
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        device=device,
        plan=plan,
        batch_size=batch_size,
        seq_len=seq_len,
        stack=stack,
        allocator=allocator,
        progress=progress,
    ).profile


def trace_step(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    *,
    loss_fn: LossFn | None = None,
    forward: Callable[[Any, Any], Any] | None = None,
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = "adamw",
    precision: str | Precision = "bf16-mixed",
    device: str | DeviceSpec = "h100-80gb",
    plan: Any = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    stack: CudaStack = DEFAULT_STACK,
    allocator: AllocatorSettings = DEFAULT_SETTINGS,
    progress: Callable[[str], None] | None = None,
) -> StepTrace:
    """``estimate``, returning the recorded trace with the profile (planner, diagnostics)."""
    from memfit.apply.fused_optimizer import use_fused
    from memfit.apply.train_step import TrainStep
    from memfit.plan.cost import load_calibration
    from memfit.plan.in_force import techniques_in_force

    report = progress or (lambda message: None)
    spec = get_device(device)
    techniques = techniques_in_force(plan)
    precision = Precision.parse(techniques.precision or precision)
    warnings = _device_warnings(spec, precision)
    name, model, batch = _resolve(model, batch, batch_size, seq_len)
    started = time.perf_counter()
    fake_mode = FakeTensorMode()
    report(f"building {name} on fake tensors")
    recorder = new_recorder(spec, stack)
    # A builder builds on the device, as `with torch.device("cuda"): model = build()` does:
    # its temporaries (weights replaced when tying, say) leave cached blocks behind.
    building = recorder if not isinstance(model, nn.Module) else contextlib.nullcontext()
    with building:
        fake_model = prepare_model(model, fake_mode, param_dtype=precision.param_dtype)
    with fake_mode, torch.device("cpu"):
        example = batch() if callable(batch) else batch
    example = prepare_batch(example, fake_mode)
    report("tracing forward, backward and optimizer step")
    with fake_model.swapped(), techniques.applied_to(fake_model.module, fake_mode) as context:

        def make_step() -> TrainStep:
            optimizer_object = make_optimizer(optimizer, fake_model.trainable())
            if techniques.fused_optimizer and optimizer_object is not None:
                use_fused(optimizer_object)
            return TrainStep(
                fake_model,
                optimizer_object,
                loss_fn=context.loss_fn or loss_fn,
                forward=forward,
                precision=precision,
                micro_batches=techniques.micro_batches,
                device_type="fake",
                forward_batch=context.forward_batch,
                lean_autocast=techniques.lean_autocast,
                recompute_products=context.recompute_products,
            )

        record = traced_step(
            fake_mode=fake_mode,
            fake_model=fake_model,
            batch=example,
            make_step=make_step,
            device=spec,
            stack=stack,
            calibration=load_calibration(spec),
            recorder=recorder,
        )
    report("simulating the CUDA caching allocator")
    result = replay(record.trace, record.marks, allocator)
    live_after_forward = _live_until(record.trace.events, record.marks.get("backward", 0))
    header = dict(
        source="estimate",
        model=name,
        device=spec.name,
        device_memory=spec.memory_bytes,
        precision=precision.name,
        optimizer=optimizer_label(optimizer),
        batch=describe_batch(example),
    )
    profile = assemble_profile(
        trace=record.trace,
        replay=result,
        modules=module_table(
            fake_model.module,
            record.trace,
            live_after_forward,
            record.grad_bytes or _param_bytes_trainable(fake_model.params),
        ),
        header=header,
        outside_pytorch={"cuda_context": spec.cuda_context_bytes},
        warnings=tuple(warnings + record.warnings),
    )
    profile = dataclasses.replace(profile, plan=techniques.label, step_time_s=record.step_time_s())
    report(f"done in {time.perf_counter() - started:.1f} s")
    return StepTrace(profile, record.trace, record.marks, fake_model, record)


def _selective_overhead_s(record: StepRecord, techniques: Any, spec: DeviceSpec) -> float:
    """Selective checkpointing's dispatch cost: per operator of its regions, forward and again
    in recomputation (``Calibration.selective_op_s``)."""
    from memfit.apply.matching import name_matches
    from memfit.plan.cost import load_calibration
    from memfit.plan.techniques import Checkpoint

    patterns = [
        p for t in techniques.techniques if isinstance(t, Checkpoint) and t.save for p in t.modules
    ]
    if not patterns:
        return 0.0

    def inside(module: str) -> bool:
        parts = module.split(".")
        return any(
            name_matches(".".join(parts[:n]), p) for p in patterns for n in range(1, len(parts) + 1)
        )

    count = sum(1 for op in record.ops if op.stage == "forward" and inside(op.module))
    return 2 * count * load_calibration(spec).selective_op_s


def _device_warnings(spec: DeviceSpec, precision: Precision) -> list[str]:
    if torch.bfloat16 in (precision.autocast_dtype, precision.param_dtype):
        if not spec.supports_bf16:
            return [
                f"{spec.display_name} ({spec.arch}) has no bf16 tensor cores; bf16 runs "
                f"emulated and slowly there. Consider precision='fp16-mixed'."
            ]
    return []


def _param_bytes_trainable(params: dict[str, torch.Tensor]) -> dict[str, int]:
    return {n: p.numel() * p.element_size() for n, p in params.items() if p.requires_grad}


def _live_until(events: list[int], stop: int) -> set[int]:
    live: set[int] = set()
    for key in events[:stop]:
        if key > 0:
            live.add(key)
        else:
            live.discard(-key)
    return live
