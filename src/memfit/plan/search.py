"""``memfit.plan``: the fastest combination of techniques that fits a memory budget.

1. Trace the unmodified step (``memfit.estimate``'s tracer). If it fits, the plan is empty.
   Otherwise Adam/AdamW's multi-tensor step is made fused where that lowers the peak, and
   Hugging Face's elementwise tanh-GELUs, if any, are fused (each less memory and no more
   time, equal to rounding); everything below is planned on top of that.
2. Find the repeated blocks, read each block's costs, and build a ladder of checkpointing
   policies per block (none; lean: only the submodules without matrix products checkpointed,
   gated MLPs fused and, under mixed precision, lean autocast, traced once all together;
   selective ones from a knapsack solved with HiGHS; full);
   identical blocks are solved once. Trace once with a chunked loss where the model has an LM
   head.
3. Screen every combination (policy x number of blocks, the other blocks pointwise or not x
   micro-batches x chunked loss) with the additive model in ``candidates.py``, fastest first.
4. Trace the fastest candidates that screening says fit, in order, until one fits for real
   (the full tracer and allocator simulation, with a safety margin for prediction error);
   then up to two that screening puts just above the target and much faster than the one
   found (screening cannot see how the allocator will pack their blocks; the trace can).

The budget is on *reserved* memory, what ``torch.cuda.max_memory_reserved()`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from memfit.devices import DEFAULT_DEVICE, DeviceSpec, HostSpec, get_device
from memfit.plan.measured import check_measure, measured_plan
from memfit.plan.plan import Plan
from memfit.plan.search_phases import Search
from memfit.plan.settings import (
    COMPILE_SAFE,
    PlanSettings,
    budget_bytes,
    budget_note,
)
from memfit.step.precision import Precision
from memfit.technique_rules import allowed_with_options
from memfit.techniques import (
    parse_allow,
)
from memfit.trace.cuda.stack import DEFAULT_STACK, CudaStack
from memfit.trace.settings import StepSettings
from memfit.trace.step_time import target_host_from

__all__ = ["plan", "PlanSettings"]


def plan(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    *,
    budget: str | int | float,
    device: str | DeviceSpec = DEFAULT_DEVICE,
    optimizer: Any = "adamw",
    precision: str = "bf16-mixed",
    loss_fn: Any = None,
    forward: Any = None,
    blocks: Sequence[str] | None = None,
    allow: str | Sequence[str] | None = None,
    head: str = "lm_head",
    chunks: int = 4,
    max_micro_batches: int = 8,
    margin: float | None = None,
    max_traces: int = 6,
    batch_size: int | None = None,
    seq_len: int | None = None,
    compile: bool = False,
    host_memory: str | int | None = None,
    host: HostSpec | None = None,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    gpus: int = 1,
    stack: CudaStack = DEFAULT_STACK,
    measure: int = 0,
    progress: Callable[[str], None] | None = None,
) -> Plan:
    """Choose techniques so that the step's reserved peak fits ``budget``, as fast as possible.

    Args:
        model, batch, optimizer, precision, loss_fn, forward, batch_size, seq_len,
            clip_grad_norm, accumulate: as for ``memfit.estimate``; techniques that cannot
            run with the step's clipping, accumulation or fp16 loss scaling
            (``OptimizerInBackward``) are left out of the default ``allow``, with a note.
        budget: reserved-memory budget: ``"16GiB"``, bytes, or a fraction of the device.
        device: the target GPU (``memfit devices``).
        blocks: module names (fnmatch patterns) that may be checkpointed, a list or one
            comma-separated string; default: the repeated blocks found automatically.
        allow: the techniques the planner may use, by name (one, or several); default: every
            technique it plans that keeps the math (``memfit.techniques.default_allow()``).
        head: the LM head for a chunked loss.
        margin: keep the predicted reserved peak this fraction below the budget, for
            prediction error; default (None): 0.02 (the measured frontier plans' reserved
            peaks came out between 1.4% above and 0.9% below their predictions:
            bench/results/frontier_h200.json), and 0.05 for plans that recompute convolutions
            (ResNet-50's measured 1.4-3.4% above theirs; the plan's notes say so).
        max_traces: candidates traced in full before giving up on the screening order.
        compile: plan for a model you compile (``torch.compile`` after ``memfit.apply``):
            only the techniques that keep their memory when compiled (``COMPILE_SAFE``: full
            checkpointing of blocks, micro-batching, the chunked loss, the fused GELU and
            optimizer step); the eager prediction then bounds the compiled step's memory
            (measured below it on an H200), and its time is the eager step's.
        host_memory: the target host's RAM (``"128GiB"``) for plans that offload to it;
            default this machine's.
        host: the target host in full (``memfit.devices.HostSpec``); overrides ``host_memory``.
        stack: the target's torch release and cuDNN (``memfit.stack_for``), as for
            ``memfit.estimate``.
        gpus: the job's GPUs; more than 1 plans FSDP2 sharding (``memfit.plan.sharded``),
            with the budget, memory and step time per rank and ``batch`` each rank's batch.
        measure: on a machine with the target GPU, time the chosen plan and the next
            ``measure - 1`` fastest predicted plans that fit (2 x 5 steps each, the model put
            back exactly afterwards) and take the fastest whose measured reserved peak stays
            within the budget (``memfit.plan.measured``); the notes give each timing beside
            its prediction. Default 0: predict only.

    Returns:
        The chosen Plan, with its prediction and the frontier of alternatives.

    Raises:
        InvalidInputError: for a malformed budget, or one larger than the device; ``allow``
            names a technique that cannot run with ``clip_grad_norm``/``accumulate``/fp16;
            ``measure`` on a machine whose GPU is not ``device``, or for a compiled or
            sharded plan.
        DeviceError: ``measure`` without a GPU.
        BudgetInfeasibleError: when no combination fits; says how much is missing.

    Known limitations:
        * Sharding is planned only when ``gpus`` is more than 1.
        * When weights, gradients and optimizer state leave too little room, the first level
          of ``model_state``'s ladder that fits is taken, not the fastest of all levels; plans
          that offload the optimizer use no micro-batching and no lean blocks.
        * Checkpointing is planned for the first k blocks with one policy for all of them.
    """
    spec = get_device(device)
    check_measure(measure, spec, compile=compile, gpus=gpus)
    step = StepSettings(
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        device=spec,
        batch_size=batch_size,
        seq_len=seq_len,
        host=host or target_host_from(host_memory, spec),
        clip_grad_norm=clip_grad_norm,
        accumulate=accumulate,
        stack=stack,
    )
    allowed, left_out = allowed_with_options(
        parse_allow(allow),
        named=allow is not None,
        clip_grad_norm=clip_grad_norm,
        accumulate=accumulate,
        grad_scaler=Precision.parse(precision).grad_scaler,
    )
    settings = PlanSettings(
        budget=budget_bytes(budget, spec),
        allow=tuple(a for a in allowed if a in COMPILE_SAFE) if compile else allowed,
        compile=compile,
        blocks=[b.strip() for b in blocks.split(",")] if isinstance(blocks, str) else blocks,
        head=head,
        chunks=chunks,
        max_micro_batches=max_micro_batches,
        margin=margin,
        max_traces=max_traces,
        gpus=gpus,
    )
    search = Search(model, batch, step, settings, progress)
    note = budget_note(budget, spec)
    if note is not None:
        search.notes.append(note)
    search.notes.extend(left_out)
    chosen = search.run()
    return measured_plan(search, chosen, measure) if measure else chosen
