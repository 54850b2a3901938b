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
   (the full tracer and allocator simulation, with a safety margin for prediction error).

The budget is on *reserved* memory, what ``torch.cuda.max_memory_reserved()`` reports.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from memfit.devices import DeviceSpec, get_device
from memfit.errors import InvalidInputError, MemfitError
from memfit.plan.blocks import block_stats
from memfit.plan.candidates import Baseline, Candidate, screen
from memfit.plan.cost import load_calibration
from memfit.plan.infeasible import infeasible_error
from memfit.plan.plan import Plan, model_fingerprint
from memfit.plan.pointwise import lean_policy
from memfit.plan.policies import Policy, block_policies
from memfit.plan.techniques import ChunkedLoss, FusedActivation, FusedOptimizer, MicroBatch
from memfit.plan.verify import Tracer, trace_fastest_fitting
from memfit.profile import Phase
from memfit.report.frontier import FrontierPoint, pareto
from memfit.trace.estimate import StepTrace, trace_step
from memfit.trace.precision import Precision
from memfit.units import format_bytes, parse_bytes

__all__ = ["plan"]

ALLOWED = (
    "checkpoint",
    "micro_batch",
    "chunked_loss",
    "fused_activation",
    "fused_gated_mlp",
    "lean_autocast",
    "fused_optimizer",
)
FUSED_NOTE = (
    "the predicted time overrates what fusing the GELUs saves: on an H200, such plans ran "
    "Hugging Face GPT-2 and GPT-2 medium 9-28% faster than unmodified where 41-52% was predicted"
)


def plan(
    model: nn.Module | Callable[[], nn.Module] | str,
    batch: Any = None,
    *,
    budget: str | int | float,
    device: str | DeviceSpec = "h100-80gb",
    optimizer: Any = "adamw",
    precision: str = "bf16-mixed",
    loss_fn: Any = None,
    forward: Any = None,
    blocks: Sequence[str] | None = None,
    allow: Sequence[str] = ALLOWED,
    head: str = "lm_head",
    chunks: int = 4,
    max_micro_batches: int = 8,
    margin: float = 0.02,
    max_traces: int = 6,
    batch_size: int | None = None,
    seq_len: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Plan:
    """Choose techniques so that the step's reserved peak fits ``budget``, as fast as possible.

    Args:
        model, batch, optimizer, precision, loss_fn, forward, batch_size, seq_len: as for
            ``memfit.estimate``.
        budget: reserved-memory budget: ``"16GiB"``, bytes, or a fraction of the device.
        device: the target GPU (``memfit devices``).
        blocks: module names (fnmatch patterns) that may be checkpointed; default: the
            repeated blocks found automatically.
        allow: techniques the planner may use (``checkpoint``, ``micro_batch``,
            ``chunked_loss``, ``fused_activation``, ``fused_gated_mlp``, ``lean_autocast``,
            ``fused_optimizer``).
        head: the LM head for a chunked loss.
        margin: keep the predicted reserved peak this fraction below the budget, for
            prediction error (the measured frontier plans' reserved peaks came out between
            1.4% above and 0.9% below their predictions: bench/results/frontier_h200.json).
        max_traces: candidates traced in full before giving up on the screening order.

    Returns:
        The chosen Plan, with its prediction and the frontier of alternatives.

    Raises:
        InvalidInputError: for a malformed budget, or one larger than the device.
        BudgetInfeasibleError: when no combination fits; says how much is missing.

    Known limitations:
        * Offloading, sharding and low-bit optimizer state are not planned yet; the error for
          an infeasible budget names them as what would close the gap.
        * Checkpointing is planned for the first k blocks with one policy for all of them.
    """
    report = progress or (lambda message: None)
    started = time.perf_counter()
    spec = get_device(device)
    limit = _budget_bytes(budget, spec)
    unknown = set(allow) - set(ALLOWED)
    if unknown:
        raise InvalidInputError(
            f"unknown technique(s) {sorted(unknown)} in allow; known: {', '.join(ALLOWED)}"
        )
    target = int(limit * (1 - margin))
    options = dict(
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        device=spec,
        batch_size=batch_size,
        seq_len=seq_len,
    )

    first: tuple[Any, ...] = ()  # in every plan: the fusions that save memory, once found
    first_label = ""
    notes: list[str] = []  # for the user, in the plan

    def trace(techniques: tuple[Any, ...] = ()) -> StepTrace:
        return trace_step(model, batch, plan=list(first + techniques) or None, **options)

    report("tracing the unmodified step")
    base = trace()
    fingerprint = model_fingerprint(base.model.module)
    baseline_s = base.profile.step_time_s or 0.0
    unmodified_peak = base.profile.peak_reserved

    def make(
        techniques: tuple[Any, ...], traced: StepTrace, frontier: Sequence[FrontierPoint] = ()
    ) -> Plan:
        if first:  # the frontier's candidates all fuse: show the step as it is too
            unmodified = FrontierPoint("unmodified", unmodified_peak, baseline_s)
            frontier = [unmodified, *frontier]
        gelus = any(isinstance(t, FusedActivation) for t in first)
        return Plan(
            techniques=first + techniques,
            budget=limit,
            device=spec.name,
            profile=traced.profile,
            step_time_s=traced.profile.step_time_s,
            baseline_step_time_s=baseline_s,
            frontier=tuple(frontier),
            model_fingerprint=fingerprint,
            notes=tuple(notes) + ((FUSED_NOTE,) if gelus else ()),
        )

    if base.profile.peak_reserved <= target:
        point = FrontierPoint("unmodified", base.profile.peak_reserved, baseline_s, chosen=True)
        return make((), base, [point])
    from memfit.apply.fused_activation import fusable_activations
    from memfit.apply.step_options import batch_statistics

    fusions: list[tuple[str, Any]] = []
    if "fused_optimizer" in allow and _may_fuse(optimizer):
        fusions.append(("fused optimizer", FusedOptimizer()))
    fusable = fusable_activations(base.model.module) if "fused_activation" in allow else []
    if fusable:
        fusions.append(("fused GELU", FusedActivation(modules=tuple(fusable))))
    for name, fusion in fusions:  # less memory, no slower: in every plan from here on
        report(f"tracing with the {name.removeprefix('fused ')} fused")
        try:
            fused = trace((fusion,))
        except MemfitError:  # e.g. an optimizer without a fused kernel
            continue
        if isinstance(fusion, FusedOptimizer) and not _saves_in_step(base, fused):
            continue  # the user's optimizer is changed only where that saves memory
        first, base = first + (fusion,), fused
        first_label = " + ".join(filter(None, (first_label, name)))
        if base.profile.peak_reserved <= target:
            step_s = base.profile.step_time_s or 0.0
            point = FrontierPoint(first_label, base.profile.peak_reserved, step_s, chosen=True)
            return make((), base, [point])
    shared = batch_statistics(base.model.module) if "micro_batch" in allow else []
    if shared:  # micro-batching would not be exact
        allow = tuple(a for a in allow if a != "micro_batch")
        notes.append(
            f"micro-batching left out: {len(shared)} BatchNorm layers (e.g. {shared[0]}) "
            f"normalise with the batch's statistics, which micro-batches would change; a "
            f"hand-made plan with MicroBatch accepts that"
        )
    report("measuring what each block keeps")
    per_block = {"checkpoint", "fused_gated_mlp", "lean_autocast"} & set(allow)
    block_names = _blocks(base, blocks) if per_block else []
    baseline = _baseline(base, trace, block_names, allow, head, chunks)
    policies = [_none_policy(base, block_names)]
    if block_names:
        stats = block_stats(base, block_names)[0]
        if "checkpoint" in allow:
            policies = block_policies(stats, load_calibration(spec).selective_op_s)
        mixed = Precision.parse(precision).autocast_dtype is not None
        policies += lean_policy(base, trace, block_names, policies[0].kept_bytes, allow, mixed)
    batch_total = _batch_size(base)
    micro = [n for n in (1, 2, 4, 8, 16, 32) if n <= min(batch_total, max_micro_batches)]
    if "micro_batch" not in allow:
        micro = [1]
    chunk_options = [1, chunks] if baseline.chunked_saving > 0 else [1]
    saved = policies[0].kept_bytes
    candidates = screen(
        baseline,
        policies,
        block_names,
        saved,
        micro,
        chunk_options,
        load_calibration(spec).launch_s,
    )
    report("tracing the most promising plans")
    static = int(
        baseline.static_bytes * base.profile.peak_reserved / max(1, base.profile.peak_allocated)
    )
    chosen, traced_points = trace_fastest_fitting(
        candidates, target, static, trace, head, max_traces
    )
    frontier = _frontier(candidates, traced_points, chosen, first_label)
    report(f"planned in {time.perf_counter() - started:.1f} s")
    if chosen is None:
        raise infeasible_error(limit, target, base, traced_points)
    techniques, traced = chosen
    return make(techniques, traced, frontier)


def _saves_in_step(base: StepTrace, fused: StepTrace) -> bool:
    """Whether the fused optimizer step holds less than the multi-tensor one (the step's peak
    may lie elsewhere until other techniques bring the activations down)."""

    def step_peak(traced: StepTrace) -> int:
        events = traced.profile.timeline
        return max((e.allocated for e in events if e.phase is Phase.OPTIMIZER), default=0)

    return step_peak(fused) < step_peak(base)


def _may_fuse(optimizer: Any) -> bool:
    """Whether the optimizer may be Adam or AdamW without the fused kernel yet."""
    if isinstance(optimizer, str):
        name = optimizer.lower()
        return name.startswith("adam") and "fused" not in name
    return callable(optimizer)  # a factory: the trace tells (use_fused refuses other types)


def _budget_bytes(budget: Any, spec: DeviceSpec) -> int:
    limit = parse_bytes(budget, of=spec.memory_bytes, what="budget")
    if limit > spec.memory_bytes:
        raise InvalidInputError(
            f"budget {format_bytes(limit)} is more than {spec.name} has "
            f"({format_bytes(spec.memory_bytes)}); give a smaller budget or another --device"
        )
    return limit


def _blocks(base: StepTrace, blocks: Sequence[str] | None) -> list[str]:
    from memfit.apply.blocks import find_blocks
    from memfit.apply.matching import match_modules

    module = base.model.module
    if blocks is None:
        return find_blocks(module)
    found = match_modules(
        module, list(blocks), what="blocks", hint=lambda: ", ".join(find_blocks(module)[:4])
    )
    return [name for name, _ in found]


def _none_policy(base: StepTrace, blocks: list[str]) -> Policy:
    saved = {m.fqn: m.activation_bytes for m in base.profile.modules}
    return Policy("none", (), saved.get(blocks[0], 0) if blocks else 0, 0.0)


def _baseline(
    base: StepTrace,
    trace: Tracer,
    blocks: list[str],
    allow: Sequence[str],
    head: str,
    chunks: int,
) -> Baseline:
    ops = [op for op in base.record.ops if op.stage in ("forward", "backward")]
    casts = sum(op.seconds for op in ops if op.stage == "forward" and op.op == "_to_copy")
    baseline = Baseline(
        base.profile,
        base.profile.step_time_s or 0.0,
        len(ops),
        casts,
        grad_bytes=sum(base.record.grad_bytes.values()),
    )
    if "micro_batch" in allow and _batch_size(base) >= 2:
        halves = trace((MicroBatch(n=2),)).profile
        dynamic = base.profile.peak_allocated - baseline.static_bytes
        screened = dynamic / 2
        traced = halves.peak_allocated - baseline.static_bytes - baseline.grad_bytes
        baseline = dataclasses.replace(
            baseline,
            micro_scale=max(0.1, traced / screened) if screened > 0 else 1.0,
            micro_ratio=halves.peak_reserved / max(1, halves.peak_allocated),
        )
    if "chunked_loss" not in allow:
        return baseline
    try:
        chunked = trace((ChunkedLoss(chunks=chunks, head=head),))
    except MemfitError:
        return baseline  # no LM head or no labels: the technique does not apply
    return dataclasses.replace(
        baseline,
        chunked_saving=base.profile.peak_allocated - chunked.profile.peak_allocated,
        chunked_extra_s=(chunked.profile.step_time_s or 0.0) - baseline.step_s,
    )


def _batch_size(base: StepTrace) -> int:
    text = base.profile.batch
    try:
        return int(text.split("[", 1)[1].split(",", 1)[0].rstrip("]"))
    except (IndexError, ValueError):
        return 1


def _frontier(
    candidates: list[Candidate],
    traced_points: list[tuple[Candidate, StepTrace]],
    chosen: tuple[tuple[Any, ...], StepTrace] | None,
    first: str = "",
) -> list[FrontierPoint]:
    points = [
        FrontierPoint(c.label(first), c.peak_reserved, c.step_s) for c in candidates if c.step_s > 0
    ]
    front = pareto(points)
    if len(front) > 12:  # keep the ends and an even spread between them
        step = (len(front) - 1) / 11
        front = [front[round(i * step)] for i in range(12)]
    for candidate, traced in traced_points:
        is_chosen = chosen is not None and traced is chosen[1]
        front.append(
            FrontierPoint(
                candidate.label(first) + " (traced)",
                traced.profile.peak_reserved,
                traced.profile.step_time_s or candidate.step_s,
                chosen=is_chosen,
            )
        )
    return front
