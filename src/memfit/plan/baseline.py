"""What screening needs from the traced, unmodified step: its ``Baseline``, its blocks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from memfit.errors import MemfitError
from memfit.plan.candidates import Baseline
from memfit.plan.policies import Policy
from memfit.plan.stack_siblings import with_large_siblings
from memfit.structure.blocks import find_blocks
from memfit.structure.matching import match_modules
from memfit.techniques import ChunkedLoss, MicroBatch
from memfit.trace.estimate import StepTrace

__all__ = ["screening_baseline", "checkpointable_blocks", "none_policy", "batch_size"]


def checkpointable_blocks(base: StepTrace, blocks: Sequence[str] | None) -> list[str]:
    module = base.model.module
    if blocks is None:
        saved = {m.fqn: m.activation_bytes for m in base.profile.modules}
        return with_large_siblings(module, find_blocks(module), saved)
    found = match_modules(
        module, list(blocks), what="blocks", hint=lambda: ", ".join(find_blocks(module)[:4])
    )
    return [name for name, _ in found]


def none_policy(base: StepTrace, blocks: list[str]) -> Policy:
    saved = {m.fqn: m.activation_bytes for m in base.profile.modules}
    return Policy("none", (), saved.get(blocks[0], 0) if blocks else 0, 0.0)


def screening_baseline(
    base: StepTrace,
    trace: Callable[..., StepTrace],
    blocks: list[str],
    allow: Sequence[str],
    chunked: ChunkedLoss | None,
    drop: Callable[[str, str], None],
) -> Baseline:
    """What screening needs; ``chunked``: the chunked loss to trace once (None: not offered).

    A technique whose trace fails here is left out of the search and ``drop(what, reason)``
    says so (micro-batching: ``Baseline.micro_batching`` False)."""
    baseline = Baseline(
        base.profile,
        base.record.step_time_s(),  # the traced step's: offloading is priced per candidate
        grad_bytes=sum(base.record.grad_bytes.values()),
    )
    if "micro_batch" in allow and batch_size(base) >= 2:
        try:
            halves_trace = trace((MicroBatch(n=2),))
        except MemfitError as error:
            drop("micro-batching", str(error))
            return _with_chunked(dataclasses.replace(baseline, micro_batching=False), trace,
                                 chunked, drop)  # fmt: skip
        halves = halves_trace.profile
        dynamic = base.profile.peak_allocated - baseline.static_bytes
        screened = dynamic / 2
        traced = halves.peak_allocated - baseline.static_bytes - baseline.grad_bytes
        baseline = dataclasses.replace(
            baseline,
            micro_scale=max(0.1, traced / screened) if screened > 0 else 1.0,
            micro_ratio=halves.peak_reserved / max(1, halves.peak_allocated),
            micro_extra_s=max(0.0, halves_trace.record.step_time_s() - baseline.step_s),
        )
    return _with_chunked(baseline, trace, chunked, drop)


def _with_chunked(
    baseline: Baseline,
    trace: Callable[..., StepTrace],
    chunked: ChunkedLoss | None,
    drop: Callable[[str, str], None],
) -> Baseline:
    """``baseline`` with what the chunked loss saves and costs, from its own trace."""
    if chunked is None:
        return baseline
    try:
        with_chunked = trace((chunked,))
    except MemfitError as error:  # e.g. no labels in the batch: the technique does not apply
        drop("the chunked loss", str(error))
        return baseline
    base_peak = baseline.profile.peak_allocated
    return dataclasses.replace(
        baseline,
        chunked_saving=base_peak - with_chunked.profile.peak_allocated,
        chunked_extra_s=with_chunked.record.step_time_s() - baseline.step_s,
    )


def batch_size(base: StepTrace) -> int:
    text = base.profile.batch
    try:
        return int(text.split("[", 1)[1].split(",", 1)[0].rstrip("]"))
    except (IndexError, ValueError):
        return 1
