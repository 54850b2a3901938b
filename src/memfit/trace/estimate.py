"""``memfit.estimate``: the GPU memory of a training step, predicted on any machine.

The step runs once on fake tensors (``FakeTensorMode``: shapes and dtypes, no memory) under a
model of the target GPU's behaviour: CUDA autocast's cast policy, the CUDA branch of composites
(fused attention kernels, fused dropout and RMSNorm), the optimizer implementations torch picks
for CUDA, and the workspaces kernels allocate. Every allocation and free is recorded, then
replayed through a simulation of PyTorch's CUDA caching allocator to predict what
``torch.cuda.max_memory_allocated()`` and ``max_memory_reserved()`` report in steady state.
"""

from __future__ import annotations

import time
import warnings as _warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_flatten
from torch.utils.module_tracker import ModuleTracker

from memfit.devices import DeviceSpec, get_device
from memfit.errors import InvalidInputError, MemfitError, UnsupportedModelError
from memfit.profile import Category, MemoryProfile, Phase
from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings
from memfit.trace.assemble import assemble_profile, module_table
from memfit.trace.cuda.autocast import cuda_autocast
from memfit.trace.cuda.composites import cuda_composites
from memfit.trace.cuda.stack import DEFAULT_STACK, CudaStack
from memfit.trace.cuda.workspaces import cuda_workspace_rules
from memfit.trace.fakeify import FakeModel, prepare_batch, prepare_model
from memfit.trace.inputs import describe_batch, make_inputs, parse_input_spec
from memfit.trace.optimizers import cuda_optimizer_defaults, make_optimizer, optimizer_label
from memfit.trace.precision import Precision
from memfit.trace.recorder import MemoryRecorder, _Trace
from memfit.trace.replay import replay
from memfit.trace.step import LossFn, training_step

__all__ = ["estimate", "trace_step", "StepTrace"]

_PHASE_OF_MARK = {"forward": Phase.FORWARD, "backward": Phase.BACKWARD}


def _resolve(model: Any, batch: Any, batch_size: int | None, seq_len: int | None):
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


@dataclass
class StepTrace:
    """A traced step: the profile and what it was made of (for the planner and diagnostics)."""

    profile: MemoryProfile
    trace: _Trace
    marks: dict[str, int]
    model: FakeModel


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
        plan: reserved for the planner: a Plan to evaluate.
        stack: the target's software (cuDNN version...), which decides some kernels.
        allocator: ``PYTORCH_CUDA_ALLOC_CONF`` options to simulate.
        progress: called with a short message at each stage (the CLI shows it).

    Returns:
        The predicted MemoryProfile (``source="estimate"``).

    Raises:
        MemfitError: for unknown names, malformed inputs, a builder that raises, a batch that
            does not fit the model, a loss that is not a scalar.

    Known limitations:
        * Kernels' internal workspaces are modelled for cuBLAS and attention; other libraries'
          (cuDNN convolution algorithms) are not, see bench/results for the measured error.
        * Data-dependent operators (``nonzero``, ``unique``, ``.item()``) cannot run on fake
          tensors; the error names the operator.
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
    report = progress or (lambda message: None)
    spec = get_device(device)
    precision = Precision.parse(precision)
    if plan is not None:
        raise InvalidInputError("plan= needs the planner (memfit plan), not available yet")
    warnings: list[str] = []
    if precision.autocast_dtype == torch.bfloat16 or precision.param_dtype == torch.bfloat16:
        if not spec.supports_bf16:
            warnings.append(
                f"{spec.display_name} ({spec.arch}) has no bf16 tensor cores; bf16 runs "
                f"emulated and slowly there. Consider precision='fp16-mixed'."
            )
    name, model, batch = _resolve(model, batch, batch_size, seq_len)
    started = time.perf_counter()
    fake_mode = FakeTensorMode()
    report(f"building {name} on fake tensors")
    fake_model = prepare_model(model, fake_mode, param_dtype=precision.param_dtype)
    with fake_mode, torch.device("cpu"):
        example = batch() if callable(batch) else batch
    example = prepare_batch(example, fake_mode)
    batch_text = describe_batch(example)
    recorder = MemoryRecorder(cuda_workspace_rules(spec, stack))
    marks: dict[str, int] = {}
    report("tracing forward, backward and optimizer step")
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", UserWarning)
        with fake_mode, ModuleTracker() as tracker, cuda_composites(spec, stack):
            with cuda_optimizer_defaults(), recorder:
                recorder.attach(tracker, fake_model.module)
                recorder.track(fake_model.params.values(), Category.PARAM, op="parameter")
                recorder.track(fake_model.buffers.values(), Category.BUFFER, op="buffer")
                recorder.track(_tensors(example), Category.OTHER, op="input")
                opt = make_optimizer(optimizer, fake_model.trainable())
                grad_scale = torch.full((), 65536.0) if precision.grad_scaler else None

                def mark(stage: str) -> None:
                    marks[stage] = len(recorder.trace.events)
                    if stage == "optimizer0":
                        recorder.recategorize(
                            [p.grad for p in fake_model.params.values()], Category.GRAD
                        )
                    if stage == "zero_grad" and opt is not None:
                        recorder.forget(_host_step_counters(opt))
                        state = [
                            t
                            for s in opt.state.values()
                            for t in s.values()
                            if isinstance(t, torch.Tensor)
                        ]
                        recorder.recategorize(state, Category.OPTIMIZER)
                    if stage == "end":
                        grads_of_params.update(_grad_bytes(fake_model.params))
                    recorder.phase = _PHASE_OF_MARK.get(stage, Phase.OPTIMIZER)

                grads_of_params: dict[str, int] = {}
                if opt is None:
                    grads_of_params = {}
                autocast = (
                    (lambda: cuda_autocast(precision.autocast_dtype))
                    if precision.autocast_dtype is not None
                    else _no_autocast
                )
                try:
                    training_step(
                        fake_model,
                        example,
                        loss_fn=loss_fn,
                        forward=forward,
                        optimizer=opt,
                        precision=precision,
                        autocast=autocast,
                        mark=mark,
                        grad_scale=grad_scale,
                        optimizer_steps=2,
                    )
                except MemfitError:
                    raise
                except Exception as error:  # the user's model: report it, whatever it raised
                    raise UnsupportedModelError(
                        f"the training step failed on fake tensors with {type(error).__name__}: "
                        f"{error}"
                    ) from error
    report("simulating the CUDA caching allocator")
    result = replay(recorder.trace, marks, allocator)
    live_after_forward = _live_until(recorder.trace.events, marks.get("backward", 0))
    header = dict(
        source="estimate",
        model=name,
        device=spec.name,
        device_memory=spec.memory_bytes,
        precision=precision.name,
        optimizer=optimizer_label(optimizer),
        batch=batch_text,
    )
    profile = assemble_profile(
        trace=recorder.trace,
        replay=result,
        modules=module_table(
            fake_model.module,
            recorder.trace,
            live_after_forward,
            grads_of_params or _param_bytes_trainable(fake_model.params),
        ),
        header=header,
        outside_pytorch={"cuda_context": spec.cuda_context_bytes},
        warnings=tuple(warnings + recorder.warnings),
    )
    report(f"done in {time.perf_counter() - started:.1f} s")
    return StepTrace(profile, recorder.trace, marks, fake_model)


def _host_step_counters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """``state["step"]`` tensors that torch.optim keeps on the CPU for CUDA parameters.

    Adam, AdamW and others keep the step count in a CPU tensor unless ``fused`` or
    ``capturable`` is set (``_init_group`` in ``torch/optim/adam.py``).
    """
    counters = []
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("capturable"):
            continue
        for param in group["params"]:
            step = optimizer.state.get(param, {}).get("step")
            if isinstance(step, torch.Tensor):
                counters.append(step)
    return counters


def _no_autocast() -> Any:
    import contextlib

    return contextlib.nullcontext()


def _tensors(batch: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(batch)[0] if isinstance(t, torch.Tensor)]


def _grad_bytes(params: dict[str, torch.Tensor]) -> dict[str, int]:
    return {
        name: p.grad.numel() * p.grad.element_size()
        for name, p in params.items()
        if p.grad is not None
    }


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
