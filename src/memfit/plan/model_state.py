"""Model-state techniques: what the planner does when weights, gradients and optimizer state
alone leave too little of the budget.

A ladder of levels, from the one expected to cost least time to the one that saves most memory,
each a tuple of technique names from the table; the planner takes the first level the user
allows whose model state can fit, traces the step with it, and plans activations on top
(``search_phases.py``). Levels whose techniques are not in the table (another version of memfit) are
skipped. Exact levels come first; those that change the math (low-bit state, pure bf16) are
tried only when ``allow`` names them.

Model state per trainable parameter (float32 weights, Adam/AdamW: two float32 moments):

====================================  =========================================
level                                 bytes on the GPU per parameter
====================================  =========================================
none                                  4 weight + 4 gradient + 8 state = 16
optimizer in backward                 4 + 8 (one parameter's gradient at a time)
low-bit state (8-bit), in backward    4 + about 2.03 (codes and one scale per 256)
pure bf16, in backward                2 + 4
optimizer on the host                 2 (bf16 working copy) for Linear weights
====================================  =========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.devices import DeviceSpec, HostSpec
from memfit.errors import BudgetInfeasibleError, InvalidInputError
from memfit.offload_cost import offloaded_step_time
from memfit.plan.candidates import Candidate
from memfit.step.host_params import offloadable_parameters
from memfit.step.precision import Precision
from memfit.techniques import FusedOptimizer, OffloadOptimizer, by_name, info
from memfit.trace.estimate import StepTrace
from memfit.trace.fakeify import prepare_model
from memfit.trace.inputs import resolve
from memfit.units import format_bytes

__all__ = [
    "Level",
    "state_levels",
    "state_bytes_per_param",
    "price_candidates",
    "host_need",
    "short_of_host",
    "infeasible_with_state",
    "count_parameters",
    "host_note",
]

# (technique names, GPU bytes of model state per trainable float32 parameter under AdamW)
_LADDER: tuple[tuple[tuple[str, ...], float], ...] = (
    (("optimizer_in_backward",), 12.0),
    (("low_bit_optimizer", "optimizer_in_backward"), 4 + 2.03),
    (("pure_bf16", "optimizer_in_backward"), 6.0),
    (("low_bit_optimizer",), 8 + 2.03),
    (("pure_bf16",), 8.0),
    (("offload_optimizer",), 2.0),
)
# rungs that keep the gradients: climbed only where optimizer_in_backward is not allowed (the
# same rung with it frees them too)
_KEEPING_GRADIENTS = {("low_bit_optimizer",), ("pure_bf16",)}


@dataclass(frozen=True)
class Level:
    """One rung: its techniques, a lower bound of the model state it leaves on the GPU, and
    the techniques the planner may not add on top (what its techniques exclude; micro-batching
    with the optimizer on the host, where each micro-batch would add a pass over host memory)."""

    label: str
    techniques: tuple[Any, ...]
    state_bytes: int
    excludes: tuple[str, ...] = ()

    def replaces(self, technique: Any) -> bool:
        """Whether ``technique`` (planned before this level) gives way to it."""
        row = info(technique)
        same = any(type(technique) is type(t) for t in self.techniques)
        return same or (row is not None and row.name in self.excludes)


def state_bytes_per_param(optimizer: Any) -> float:
    """Bytes of weight, gradient and optimizer state per float32 parameter (no technique)."""
    name = optimizer.lower() if isinstance(optimizer, str) else "adam"
    if optimizer is None:
        return 4.0
    if name.startswith("sgd"):
        return 12.0  # momentum buffer (a factory or plain SGD may hold less)
    return 16.0


def state_levels(
    allow: Sequence[str], precision: str, optimizer: Any, trainable: int, offloadable: int
) -> list[Level]:
    """The rungs the user allows, in order; ``trainable`` parameters, of which ``offloadable``
    can have their optimizer on the host (the others, embeddings and norms, stay on the GPU)."""
    resident = trainable - offloadable
    mixed = Precision.parse(precision)
    levels = []
    for names, per_param in _LADDER:
        if not all(name in allow for name in names):
            continue
        if names in _KEEPING_GRADIENTS and "optimizer_in_backward" in allow:
            continue
        try:
            rows = [by_name(name) for name in names]
        except InvalidInputError:
            continue  # not in this memfit's table
        techniques: list[Any] = []
        if "offload_optimizer" in names:
            dtype = {"bf16-mixed": "bfloat16", "fp32": "float32"}.get(mixed.name)
            if dtype is None or not _adam(optimizer):
                continue
            if "fused_optimizer" in allow and _fusable(optimizer):
                techniques.append(FusedOptimizer())  # the resident parameters' GPU step
            techniques.append(OffloadOptimizer(dtype=dtype))
            state = int(2 * (trainable - resident) + 16 * resident)
        else:
            techniques += [row.type() for row in rows]
            state = int(per_param * trainable)
        label = " + ".join(name.replace("_", " ") for name in names)
        excludes = {e for t in techniques if (row := info(t)) is not None for e in row.excludes}
        if "offload_optimizer" in names:
            excludes.add("micro_batch")
        levels.append(Level(label, tuple(techniques), state, tuple(sorted(excludes))))
    return levels


def count_parameters(
    model: Any, batch: Any, batch_size: int | None, seq_len: int | None
) -> tuple[int, int, int]:
    """(trained, of them offloadable, frozen) parameters, the model built on fake tensors (a
    builder) or read as it is (a module): what bounds the model state before any trace."""
    _, built, _ = resolve(model, batch, batch_size, seq_len)
    module = built if isinstance(built, nn.Module) else _build_counting(built)
    seen: set[int] = set()
    trained = frozen = 0
    for param in module.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param.requires_grad:
            trained += param.numel()
        else:
            frozen += param.numel()
    offloadable = sum(p.numel() for _, p, _ in offloadable_parameters(module))
    return trained, offloadable, frozen


def _build_counting(builder: Any) -> nn.Module:
    """The model on the meta device (no memory, no initialisation kernels), else on fake
    tensors as the tracer builds it (builders that need real devices)."""
    try:
        with torch.device("meta"):
            module = builder()
        if isinstance(module, nn.Module):
            return module
    except Exception:  # the user's builder: it may not run on meta; the tracer's way then
        pass
    return prepare_model(builder, FakeTensorMode()).module


def _adam(optimizer: Any) -> bool:
    return callable(optimizer) or (isinstance(optimizer, str) and optimizer.startswith("adam"))


def _fusable(optimizer: Any) -> bool:
    return isinstance(optimizer, str) and optimizer.startswith("adam") and "fused" not in optimizer


def price_candidates(
    candidates: list[Candidate],
    base: StepTrace,
    device: DeviceSpec,
    host: HostSpec,
) -> list[Candidate]:
    """Screened candidates with their step time as the offload cost model has it (GPU, host
    and PCIe overlapped), for plans that offload the optimizer or activations."""
    record = base.record
    gpu_base = record.step_time_s()
    forward, backward = record.stage_s("forward"), record.stage_s("backward")
    priced = []
    for candidate in candidates:
        if not (record.offloaded_params or candidate.offloaded_bytes):
            priced.append(candidate)
            continue
        extra = max(0.0, candidate.step_s - gpu_base)  # recomputation, in backward
        timing = offloaded_step_time(
            gpu_s=candidate.step_s,
            forward_s=forward,
            backward_s=backward + extra,
            offloaded_params=record.offloaded_params,
            first_share=record.first_share,
            activation_bytes=candidate.offloaded_bytes,
            micro_batches=candidate.micro_batches,
            device=device,
            host=host,
        )
        priced.append(replace(candidate, step_s=timing.step_s))
    return priced


def host_need(held: int, host: HostSpec) -> int:
    """Host memory a plan needs: what it holds there plus the process's own."""
    return held + host.process_bytes if held else 0


def short_of_host(held: int, host: HostSpec) -> str | None:
    """Why ``held`` bytes in host memory do not fit ``host``, or None when they do."""
    need = host_need(held, host)
    if need <= host.memory_bytes:
        return None
    return (
        f"it needs {format_bytes(need)} of host memory ({format_bytes(held)} offloaded + "
        f"{format_bytes(host.process_bytes)} for the process) and the host has "
        f"{format_bytes(host.memory_bytes)}"
    )


def infeasible_with_state(
    budget: int,
    target: int,
    state_bytes: int,
    tried: list[tuple[str, str]],
    allow: Sequence[str],
) -> BudgetInfeasibleError:
    """The error when no level fits: the figures of each level tried, and the fixes."""
    details = "; ".join(f"{label}: {why}" for label, why in tried) or "no level allowed"
    inexact = [name for name in ("low_bit_optimizer", "pure_bf16") if name not in allow]
    return BudgetInfeasibleError(
        f"budget {format_bytes(budget)} cannot be met (plans must predict at most "
        f"{format_bytes(target)} reserved): weights, gradients and optimizer state take "
        f"{format_bytes(state_bytes)} without model-state techniques; {details}. Fixes: a "
        f"larger budget, a smaller batch, a host with more memory (--host-memory), sharding "
        f"across GPUs (--gpus N)"
        + (
            f", or allow techniques that change the math (--allow {','.join(inexact)})"
            if inexact
            else ""
        )
    )


def host_note(traced: StepTrace, device: DeviceSpec, host: HostSpec) -> str | None:
    """What a plan that offloads asks of the host, and which of GPU, host and PCIe sets its
    step time; None for plans that offload nothing."""
    record, held = traced.record, traced.profile.host_peak
    if not held:
        return None
    timing = offloaded_step_time(
        gpu_s=record.step_time_s(),
        forward_s=record.stage_s("forward"),
        backward_s=record.stage_s("backward"),
        offloaded_params=record.offloaded_params,
        first_share=record.first_share,
        activation_bytes=record.host_bytes.get("offloaded activations", 0),
        micro_batches=1,
        device=device,
        host=host,
    )
    bound = {"gpu": "the GPU", "host": "the host's Adam step", "pcie": "PCIe copies"}
    origin = {
        "local": "this machine",
        "given": "as given",
        "calibrated": "calibrated here",
        "reference": "assumed: this machine's memory, --host-memory to change it",
    }
    return (
        f"host memory: {format_bytes(held)} offloaded + {format_bytes(host.process_bytes)} for "
        f"the process, of a host with {host.describe()} ({origin.get(host.name, host.name)}); "
        f"the step time is set by {bound[timing.bound]} (GPU {timing.gpu_s * 1e3:.0f} ms, host "
        f"{timing.host_s * 1e3:.0f} ms, PCIe {timing.pcie_s * 1e3:.0f} ms)"
    )
