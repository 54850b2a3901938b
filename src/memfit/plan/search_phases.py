"""The planner's search, phase by phase: what ``memfit.plan`` runs (``search.py`` describes the
algorithm): the unmodified trace, the free fusions (``free_fusions.py``), the model-state
ladder, the screening of every combination and the traces that confirm the fastest that fits."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

from memfit.cost import load_calibration
from memfit.devices import get_device
from memfit.errors import MemfitError
from memfit.plan.baseline import (
    batch_size,
    checkpointable_blocks,
    none_policy,
    screening_baseline,
)
from memfit.plan.blocks import block_stats
from memfit.plan.candidates import Candidate, screen
from memfit.plan.choice_notes import choice_notes
from memfit.plan.dropped import dropped_note
from memfit.plan.expandable import expandable_already, with_expandable_segments
from memfit.plan.free_fusions import FUSION_LABELS, fuse_first
from memfit.plan.frontier import FrontierPoint, plan_frontier
from memfit.plan.infeasible import infeasible_error
from memfit.plan.known_misses import recomputes_convolutions
from memfit.plan.loss_check import chunkable_loss
from memfit.plan.measured import Found
from memfit.plan.model_state import (
    count_parameters,
    infeasible_with_state,
    price_candidates,
    short_of_host,
    state_bytes_per_param,
    state_levels,
)
from memfit.plan.plan import Plan
from memfit.plan.pointwise import lean_policy
from memfit.plan.policies import block_policies, offloaded_policy
from memfit.plan.settings import CHUNK_BYTES, COMPILE_NOTE, PlanSettings
from memfit.plan.sharded import plan_sharded
from memfit.plan.verify import trace_fastest_fitting
from memfit.step.precision import Precision
from memfit.structure.layers import batch_statistics
from memfit.techniques import ChunkedLoss, model_fingerprint
from memfit.trace.estimate import StepTrace, trace_step
from memfit.trace.settings import StepSettings
from memfit.trace.step_time import target_host
from memfit.units import format_bytes

__all__ = ["Search"]


class Search:
    """One planning run: its phases, and what they learn about the step."""

    def __init__(
        self,
        model: Any,
        batch: Any,
        step: StepSettings,
        settings: PlanSettings,
        progress: Callable[[str], None] | None,
    ) -> None:
        self.model, self.batch, self.step, self.settings = model, batch, step, settings
        self.report = progress or (lambda message: None)
        self.allow = settings.allow
        self.first: tuple[Any, ...] = ()  # in every plan: the fusions that save memory
        self.first_label = ""
        self.notes: list[str] = [COMPILE_NOTE] if settings.compile else []  # for the user
        self.dropped: list[str] = []  # what failed to trace and was left out, and why
        self.chunked: ChunkedLoss | None = None
        self.chunked_checked = False  # the step's loss checked once, for every base traced
        self.traced_points: list[Any] = []
        self.found: Found | None = None  # what the last activation search weighed (measured.py)
        self.host = target_host(step, get_device(step.device))

    def run(self) -> Plan:
        started = time.perf_counter()
        self.report("counting parameters")
        trained, offloadable, frozen = count_parameters(
            self.model, self.batch, self.step.batch_size, self.step.seq_len
        )
        per_param = state_bytes_per_param(self.step.optimizer)
        self.state_bytes = int(per_param * trained + 4 * frozen)
        self.levels = state_levels(
            self.allow, str(self.step.precision), self.step.optimizer, trained, offloadable
        )
        self.fingerprint = ""
        self.baseline_s = 0.0
        self.unmodified_peak = 0
        one_gpu = self.settings.gpus == 1  # sharding divides the model state instead
        if one_gpu and self.levels and self.state_bytes > self.settings.target:  # never fits
            return self.with_model_state(started)
        self.report("tracing the unmodified step")
        self.base = self.trace()
        self.fingerprint = model_fingerprint(self.base.model.module)
        self.baseline_s = self.base.profile.step_time_s or 0.0
        self.unmodified_peak = self.base.profile.peak_reserved
        if self.settings.gpus > 1:
            return plan_sharded(self)
        return self.search()

    def search(self) -> Plan:
        """The plan on top of ``self.first``, from ``self.base`` (their trace) on."""
        started = time.perf_counter()
        if self.fits(self.base):
            label = self.first_label or "unmodified"
            profile = self.base.profile
            point = FrontierPoint(label, profile.peak_reserved, profile.step_time_s or 0.0)
            return self.make((), self.base, [dataclasses.replace(point, chosen=True)])
        fused = fuse_first(self)
        if fused is not None:
            return fused
        self.leave_out_inexact_micro_batching()
        chosen = self.plan_activations()
        if chosen is not None:
            self.report(f"planned in {time.perf_counter() - started:.1f} s")
            return chosen
        if self.levels:
            return self.with_model_state(started)
        stricter = self.stricter_target(self.traced_points)
        raise infeasible_error(
            self.settings.budget,
            self.settings.target,
            self.base,
            self.traced_points,
            self.allow,
            [*self.dropped, *filter(None, [stricter])],
        )

    def plan_activations(self) -> Plan | None:
        """The fastest activation plan on top of ``self.first`` that fits, if any."""
        candidates = self.screen()
        self.report("tracing the most promising plans")
        chosen, verified = trace_fastest_fitting(
            candidates,
            self.settings.target,
            self.static,
            self.trace,
            self.chunked,
            self.settings.max_traces,
            self.target_of,
        )
        self.traced_points = verified.traced
        for label, reason in verified.dropped:
            self.drop(label, reason)
        expanded = None
        if "expandable_segments" in self.allow and not expandable_already(self.step):
            self.report("tracing the plans fragmentation keeps out, with expandable segments")
            expanded = with_expandable_segments(
                verified, chosen, self.chunked, self.trace, self.target_of
            )
        if expanded is None and chosen is None:
            return None
        if expanded is not None:
            techniques, traced, before = expanded
            chosen = techniques, traced
        frontier = plan_frontier(candidates, verified, chosen, self.first_label)
        if expanded is not None:
            label = f"{before.label(self.first_label)} + expandable segments (traced)"
            peak, step_s = traced.profile.peak_reserved, traced.profile.step_time_s or 0.0
            frontier = [*frontier, FrontierPoint(label, peak, step_s, chosen=True)]
        assert chosen is not None
        self.found = Found(candidates, verified, chosen, frontier)
        return self.make(*chosen, frontier)

    def with_model_state(self, started: float) -> Plan:
        """Climb the model-state ladder: the first level whose plan fits GPU and host."""
        tried: list[tuple[str, str]] = []
        first, allow, label = self.first, self.allow, self.first_label
        for level in self.levels:
            if level.state_bytes > self.settings.target:
                tried.append((level.label, f"its model state alone takes at least "
                              f"{format_bytes(level.state_bytes)}"))  # fmt: skip
                continue
            kept = tuple(t for t in first if not level.replaces(t))
            given_way = {FUSION_LABELS.get(type(t)) for t in first if level.replaces(t)}
            parts = [part for part in label.split(" + ") if part not in given_way]
            self.first = kept + level.techniques
            self.first_label = " + ".join(filter(None, (*parts, level.label)))
            self.allow = tuple(a for a in allow if a not in level.excludes)
            self.report(f"tracing with {level.label}")
            try:
                self.base = self.trace()
            except MemfitError as error:  # e.g. torchao missing for low-bit state
                tried.append((level.label, str(error)))
                continue
            self.fingerprint = self.fingerprint or model_fingerprint(self.base.model.module)
            chosen = self.fitting_with_state(started, tried, level.label)
            if chosen is not None:
                return chosen
        self.allow = allow
        raise infeasible_with_state(
            self.settings.budget, self.settings.target, self.state_bytes, tried, allow
        )

    def fitting_with_state(
        self, started: float, tried: list[tuple[str, str]], label: str
    ) -> Plan | None:
        """The plan on top of this level's traced base, if one fits GPU and host."""
        self.found = None  # an earlier level's plans are not this level's
        short = short_of_host(self.base.profile.host_peak, self.host)
        if short is not None:
            tried.append((label, short))
            return None
        if self.fits(self.base):
            peak, step_s = self.base.profile.peak_reserved, self.base.profile.step_time_s
            point = FrontierPoint(self.first_label, peak, step_s or 0.0, chosen=True)
            return self.make((), self.base, [point])
        chosen = self.plan_activations()
        held = chosen.profile.host_peak if chosen is not None and chosen.profile else 0
        if chosen is not None and short_of_host(held, self.host) is None:
            self.report(f"planned in {time.perf_counter() - started:.1f} s")
            return chosen
        # the level's own trace counts: no activation plan may have traced (all refused)
        traced = [t.profile.peak_reserved for _, t in self.traced_points]
        best = min([*traced, self.base.profile.peak_reserved])
        stricter = self.stricter_target(self.traced_points)
        needs = f"the most memory-saving plan traced needs {format_bytes(best)} reserved"
        tried.append((label, needs + (f" ({stricter})" if stricter else "")))
        return None

    def stricter_target(self, traced: list[tuple[Any, StepTrace]]) -> str | None:
        """What a refusal says when the smallest plan traced was held further below the
        budget than the margin (it recomputes convolutions), else None."""
        if not traced:
            return None
        candidate, smallest = min(traced, key=lambda ct: ct[1].profile.peak_reserved)
        limit = self.target_of(candidate.techniques(self.chunked), smallest)
        if limit >= self.settings.target:
            return None
        return (
            f"it recomputes convolutions, so it must predict at most {format_bytes(limit)}: "
            f"such plans measured up to 10% above their predictions; margin=X (memfit plan "
            f"--margin X) sets another margin"
        )

    def drop(self, what: str, reason: str) -> None:
        """Leave ``what`` out of the search, saying why in the plan's notes."""
        note = dropped_note(what, reason)
        if note not in self.dropped:
            self.dropped.append(note)
            self.notes.append(note)

    def trace(self, techniques: tuple[Any, ...] = ()) -> StepTrace:
        return trace_step(self.model, self.batch, self.step, plan=list(self.first + techniques))

    def fits(self, traced: StepTrace) -> bool:
        """Whether the plan ``first`` alone (as ``traced``) keeps to its target."""
        return traced.profile.peak_reserved <= self.target_of((), traced)

    def target_of(self, techniques: tuple[Any, ...], traced: StepTrace) -> int:
        """The predicted peak the plan with ``techniques`` (on top of ``first``) may reach."""
        convolving = recomputes_convolutions(self.first + techniques, traced)
        return self.settings.target_for(convolving)

    def make(
        self,
        techniques: tuple[Any, ...],
        traced: StepTrace,
        frontier: Sequence[FrontierPoint] = (),
    ) -> Plan:
        if self.first and self.unmodified_peak:  # the candidates all fuse: show the step too
            unmodified = FrontierPoint("unmodified", self.unmodified_peak, self.baseline_s)
            frontier = [unmodified, *frontier]
        return Plan(
            techniques=self.first + techniques,
            budget=self.settings.budget,
            device=get_device(self.step.device).name,
            profile=traced.profile,
            step_time_s=traced.profile.step_time_s,
            baseline_step_time_s=self.baseline_s or None,
            frontier=tuple(frontier),
            model_fingerprint=self.fingerprint,
            notes=choice_notes(self, techniques, traced, frontier),
        )

    def chunked_loss(self) -> ChunkedLoss | None:
        """The chunked loss the plan may use: one computing the step's own loss, or none (with
        a note saying why, where the model has an LM head)."""
        if "chunked_loss" not in self.allow:
            return None
        loss, note = chunkable_loss(
            self.model,
            self.batch,
            self.base.model.module,
            self.step.loss_fn,
            self.step.forward,
            self.settings.head,
        )
        if note:
            self.notes.append(note)
        if loss is None:
            return None
        chunks = self.chunks(self.base)
        return ChunkedLoss(chunks=chunks, head=self.settings.head, **loss.settings())

    def leave_out_inexact_micro_batching(self) -> None:
        """Micro-batches normalise BatchNorm layers with their own statistics: not exact."""
        module = self.base.model.module
        shared = batch_statistics(module) if "micro_batch" in self.allow else []
        if shared:
            self.allow = tuple(a for a in self.allow if a != "micro_batch")
            self.notes.append(
                f"micro-batching left out: {len(shared)} BatchNorm layers (e.g. {shared[0]}) "
                f"normalise with the batch's statistics, which micro-batches would change; a "
                f"hand-made plan with MicroBatch accepts that"
            )

    def chunks(self, base: StepTrace) -> int:
        """Slices of the chunked loss: at least ``settings.chunks``, doubled until one slice's
        float32 logits take at most ``CHUNK_BYTES`` (the head's largest output, as traced)."""
        head = self.settings.head
        logits = max(
            (a.size for a in base.trace.allocations.values() if a.module == head and not a.host),
            default=0,
        )
        chunks = self.settings.chunks
        while 4 * logits / 2 / chunks > CHUNK_BYTES and chunks < 1024:  # bf16 out, fp32 slice
            chunks *= 2
        return chunks

    def screen(self) -> list[Candidate]:
        """Every combination of policies, blocks, micro-batches and chunking, screened."""
        self.report("measuring what each block keeps")
        allow, settings, base = self.allow, self.settings, self.base
        spec = get_device(self.step.device)
        per_block = {"checkpoint", "fused_gated_mlp", "lean_autocast"} & set(allow)
        block_names = checkpointable_blocks(base, settings.blocks) if per_block else []
        if per_block and not block_names:
            self.drop(
                "checkpointing and lean blocks",
                f"no repeated blocks found in this {type(base.model.module).__name__}; name the "
                f"modules to checkpoint with blocks=[...] (memfit plan --blocks PATTERNS)",
            )
        if not self.chunked_checked:
            self.chunked = self.chunked_loss()
            self.chunked_checked = True
        baseline = screening_baseline(base, self.trace, block_names, allow, self.chunked, self.drop)
        policies = [none_policy(base, block_names)]
        if block_names:
            stats = block_stats(base, block_names)[0]
            if "checkpoint" in allow:
                policies = block_policies(stats, load_calibration(spec).selective_op_s)
            if settings.compile:  # selective checkpointing and lean blocks: not under compile
                policies = [p for p in policies if p.kind in ("none", "full")]
            if "offload_activations" in allow and "checkpoint" in allow:
                policies.append(offloaded_policy(stats, spec.pcie_bytes_s))
            mixed = Precision.parse(self.step.precision).autocast_dtype is not None
            kept = policies[0].kept_bytes
            # host-side plans: fewer traces, no lean blocks; compiled ones: no lean blocks
            if not (settings.compile or base.record.offloaded_params):
                policies += lean_policy(
                    base, self.trace, block_names, kept, allow, mixed, self.drop
                )
        batch_total = batch_size(base)
        limit = min(batch_total, settings.max_micro_batches)
        micro = [n for n in (1, 2, 4, 8, 16, 32) if n <= limit]
        if "micro_batch" not in allow or not baseline.micro_batching:
            micro = [1]
        chunked = self.chunked
        chunk_options = [1, chunked.chunks] if chunked and baseline.chunked_saving > 0 else [1]
        profile = base.profile
        self.static = int(
            baseline.static_bytes * profile.peak_reserved / max(1, profile.peak_allocated)
        )
        candidates = screen(
            baseline,
            policies,
            block_names,
            policies[0].kept_bytes,
            micro,
            chunk_options,
        )
        candidates = price_candidates(candidates, base, spec, self.host)
        held = base.profile.host_peak
        return [c for c in candidates if short_of_host(held + c.offloaded_bytes, self.host) is None]
