"""Nothing the planner leaves out is left out silently: a technique or candidate whose trace
fails for this model is named, with the tracer's reason, in the plan's notes (printed by
``memfit plan``, kept in its JSON) and in the error when no plan fits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import BudgetInfeasibleError, UnsupportedModelError
from memfit.plan.candidates import Candidate
from memfit.plan.dropped import REASON_CHARS, dropped_note
from memfit.plan.policies import Policy
from memfit.plan.verify import trace_fastest_fitting
from memfit.report.plan_text import plan_text

NONE = Policy("none", (), 0, 0.0)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(256, 1024), nn.Linear(1024, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class FixedBatch(nn.Module):
    """Blocks of products whose forward reshapes to a hard-coded batch of 8: a half batch
    (micro-batching) cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(8, 1024, 256)
        for block in self.blocks:
            x = block(x)
        return x.float().pow(2).mean()


SETTINGS = dict(loss_fn=lambda out, batch: out, optimizer="adamw-fused", precision="fp32")
ALLOW = ("checkpoint", "micro_batch")
SPEC = "float32[8,1024,256]"


def test_a_candidate_that_fails_to_trace_is_recorded_and_the_next_one_chosen() -> None:
    fast = Candidate(NONE, (), 2, 1, 90, 90, 1.0)
    slow = Candidate(NONE, (), 1, 1, 90, 90, 2.0)

    def trace(techniques: tuple) -> SimpleNamespace:
        if techniques:  # the micro-batched one
            raise UnsupportedModelError("the half batch does not reshape to (8, 64, 256)")
        return SimpleNamespace(profile=SimpleNamespace(peak_reserved=90, step_time_s=2.0))

    chosen, verified = trace_fastest_fitting([fast, slow], 110, 50, trace, None, 4)
    assert chosen is not None and chosen[0] == ()
    assert verified.dropped == [
        ("micro-batch x2", "the half batch does not reshape to (8, 64, 256)")
    ]


def test_a_long_reason_is_cut_and_kept_on_one_line() -> None:
    note = dropped_note("lean blocks", "first line\nsecond " + "x" * 1000)
    assert note.startswith("left out lean blocks: first line second x")
    assert "\n" not in note and note.endswith("...")
    assert len(note) <= len("left out lean blocks: ") + REASON_CHARS


@pytest.fixture(scope="module")
def unmodified() -> memfit.MemoryProfile:
    return memfit.estimate(FixedBatch, SPEC, **SETTINGS)


def _budget(profile: memfit.MemoryProfile, fraction: float) -> int:
    static = sum(
        profile.by_category.get(c, 0)
        for c in (memfit.Category.PARAM, memfit.Category.OPTIMIZER, memfit.Category.OTHER)
    )
    return int(static + fraction * (profile.peak_reserved - static))


@pytest.mark.slow
def test_micro_batching_that_cannot_run_is_left_out_with_its_reason(unmodified) -> None:
    every_block = [memfit.Checkpoint(modules=("blocks.*",))]
    full = memfit.estimate(FixedBatch, SPEC, plan=every_block, **SETTINGS).peak_reserved
    budget = (full + unmodified.peak_reserved) // 2
    plan = memfit.plan(FixedBatch, SPEC, budget=budget, allow=ALLOW, **SETTINGS)
    assert not plan.of(memfit.MicroBatch)
    assert plan.of(memfit.Checkpoint)  # the plan still fits, by checkpointing
    notes = [n for n in plan.notes if n.startswith("left out micro-batching: ")]
    assert len(notes) == 1 and "is invalid for input of size" in notes[0]
    assert notes[0] in plan.to_dict()["notes"]
    assert f"note: {notes[0]}" in plan_text(plan)


@pytest.mark.slow
def test_the_infeasible_error_names_what_was_left_out(unmodified) -> None:
    with pytest.raises(
        BudgetInfeasibleError, match="left out micro-batching: .*is invalid for input"
    ):
        memfit.plan(FixedBatch, SPEC, budget=_budget(unmodified, 0.02), allow=ALLOW, **SETTINGS)
