"""memfit.plan: an empty plan when the step fits, the fastest fitting plan otherwise, the errors."""

from __future__ import annotations

import re

import pytest

import memfit
from memfit.devices import get_device
from memfit.errors import BudgetInfeasibleError, InvalidInputError
from memfit.report.plan_text import plan_text
from memfit.techniques import (
    Checkpoint,
    ChunkedLoss,
    ExpandableSegments,
    FusedActivation,
    FusedOptimizer,
    MicroBatch,
    default_allow,
    model_fingerprint,
)
from memfit.units import format_bytes, parse_bytes

from .helpers import BATCH, build

ALLOWED = default_allow()
ON_THE_GPU = tuple(a for a in ALLOWED if a not in ("offload_optimizer", "optimizer_in_backward"))


@pytest.mark.slow
def test_no_technique_when_the_unmodified_step_fits(unmodified):
    # the planner keeps `margin` below the budget: at exactly the predicted peak only a plan
    # without margin is empty, with the default margin the budget must be 2% larger
    exact = memfit.plan(build, BATCH, budget=unmodified.peak_reserved, margin=0.0)
    roomy = memfit.plan(build, BATCH, budget=int(unmodified.peak_reserved / 0.98) + 1)
    for chosen in (exact, roomy):
        assert chosen.techniques == ()
        assert chosen.label == "unmodified"
        assert chosen.overhead == 0.0
        assert chosen.profile.peak_reserved == unmodified.peak_reserved
        assert chosen.step_time_s == unmodified.step_time_s
        assert [p.chosen for p in chosen.frontier] == [True]
    tight = memfit.plan(build, BATCH, budget=unmodified.peak_reserved)
    assert tight.techniques != ()  # the 2% margin asks for something
    assert tight.profile.peak_reserved <= unmodified.peak_reserved * 0.98


@pytest.mark.slow
def test_plan_fits_a_tighter_budget(midway, midway_plan, unmodified):
    plan = midway_plan
    assert plan.techniques, "the unmodified step does not fit midway"
    assert plan.budget == midway and plan.device == "h100-80gb"
    assert plan.profile.peak_reserved <= midway * 0.98  # the default margin is kept
    assert plan.model_fingerprint == model_fingerprint(build())
    # an independent trace of the chosen plan predicts the same peak, within the budget
    again = memfit.estimate(build, BATCH, plan=plan)
    assert again.peak_reserved == plan.profile.peak_reserved <= midway
    assert again.peak_allocated == plan.profile.peak_allocated
    assert again.plan == plan.profile.plan != ""
    # it costs time: more than the same step with only the free fusions of every plan
    assert plan.baseline_step_time_s == unmodified.step_time_s
    fusions = [t for t in plan.techniques if isinstance(t, (FusedOptimizer, FusedActivation))]
    assert len(fusions) < len(plan.techniques)
    fused_only = memfit.estimate(build, BATCH, plan=fusions).step_time_s
    assert plan.step_time_s > fused_only
    assert plan.overhead == pytest.approx(plan.step_time_s / plan.baseline_step_time_s - 1)


@pytest.mark.slow
def test_frontier_is_consistent(midway, midway_plan):
    plan = midway_plan
    chosen = [p for p in plan.frontier if p.chosen]
    assert len(chosen) == 1
    assert chosen[0].peak_reserved == plan.profile.peak_reserved
    assert chosen[0].step_time_s == plan.step_time_s
    assert chosen[0].label.endswith("(traced)")
    # with fusions in every plan (the tiny model's AdamW step made fused), the unmodified
    # step is shown first for comparison
    assert plan.frontier[0].label == "unmodified"
    screened = [p for p in plan.frontier[1:] if not p.label.endswith("(traced)")]
    traced = [p for p in plan.frontier if p.label.endswith("(traced)")]
    # the screening estimates are a Pareto front: by increasing memory, decreasing time
    assert len(screened) >= 2
    assert [p.peak_reserved for p in screened] == sorted(p.peak_reserved for p in screened)
    times = [p.step_time_s for p in screened]
    assert all(a > b for a, b in zip(times, times[1:], strict=False))
    # the fastest alternative is the fused step with nothing else (screened, or traced when
    # screening put it near the target)
    fastest = min(plan.frontier[1:], key=lambda p: p.step_time_s)
    assert fastest.label.removesuffix(" (traced)") == "fused optimizer"
    # no traced plan that fits the budget is faster than the chosen one
    target = midway * 0.98
    for point in traced:
        if point.peak_reserved <= target:
            assert point.step_time_s >= chosen[0].step_time_s, point
    # the text shows the choice and the alternatives, smallest first, the chosen one starred
    text = plan_text(plan)
    assert text.splitlines()[0] == f"plan            {plan.label}"
    assert f"budget          {format_bytes(midway)} reserved" in text
    table = text.split("alternatives weighed")[1].splitlines()[3:]
    assert len(table) == len(plan.frontier)
    starred = [row for row in table if row.startswith("* ")]
    assert len(starred) == 1 and starred[0][2:].startswith(chosen[0].label)
    shown = [parse_bytes(re.split(r"\s{2,}", row.strip())[-2].replace(" ", "")) for row in table]
    assert shown == sorted(shown)


@pytest.fixture(scope="module")
def below_full(all_checkpointed):
    """A budget the fully checkpointed step misses by the 2% margin, and its plan."""
    budget = all_checkpointed.peak_reserved
    return budget, memfit.plan(build, BATCH, budget=budget)


@pytest.mark.slow
def test_below_full_checkpointing_needs_another_technique(below_full):
    budget, plan = below_full
    # no checkpointing policy saves more than full checkpointing of every block: something
    # else does (less to keep, or less fragmentation)
    others = (MicroBatch, ChunkedLoss, ExpandableSegments)
    assert any(plan.of(kind) for kind in others), plan.label
    assert plan.profile.peak_reserved <= budget * 0.98
    assert sum(p.chosen for p in plan.frontier) == 1


@pytest.mark.slow
def test_below_full_checkpointing_is_not_much_slower_than_a_fitting_alternative(below_full):
    budget, plan = below_full
    alternative = (
        Checkpoint(modules=("layers.*",)),
        MicroBatch(n=2),
        ChunkedLoss(chunks=8),
    )
    other = memfit.estimate(build, BATCH, plan=alternative)
    assert other.peak_reserved <= budget * 0.98  # it fits
    assert plan.step_time_s <= 1.5 * other.step_time_s


@pytest.mark.slow
def test_allow_restricts_the_techniques(midway):
    plan = memfit.plan(build, BATCH, budget=midway, allow=("micro_batch",))
    assert plan.techniques and all(isinstance(t, MicroBatch) for t in plan.techniques)
    assert plan.profile.peak_reserved <= midway * 0.98
    with pytest.raises(
        InvalidInputError, match=r"\['offload'\] in allow; the planner chooses from: "
    ):
        memfit.plan(build, BATCH, budget=midway, allow=("checkpoint", "offload"))


@pytest.mark.slow
def test_infeasible_budget_says_what_is_missing(unmodified):
    tensors = list(build().parameters())
    params = sum(p.numel() * p.element_size() for p in tensors)
    states = 4 * params  # fp32 weights, gradients and AdamW's two moments
    budget = 3 * params + 4096  # above weights and optimizer state, below the step's need
    with pytest.raises(BudgetInfeasibleError) as info:
        memfit.plan(build, BATCH, budget=budget, allow=ON_THE_GPU)
    message = str(info.value)
    assert f"budget {format_bytes(budget)} cannot be met" in message
    took = parse_bytes(
        re.search(r"state alone take (\S+ \S+)\.", message).group(1).replace(" ", "")
    )
    # plus the fused step's counters: a float32 on the device per parameter (512 B blocks);
    # the message rounds to two decimals
    assert states - 0.01 * 2**20 <= took <= states + 512 * len(tensors) + 0.01 * 2**20
    needs, missing, margin = re.search(
        r"still needs (\S+ \S+) reserved \((\S+ \S+) missing, with the (\S+ \S+) safety", message
    ).groups()
    needs, missing = parse_bytes(needs.replace(" ", "")), parse_bytes(missing.replace(" ", ""))
    assert params * 3 < needs <= unmodified.peak_reserved
    target = int(budget * (1 - 0.02))  # the default margin
    assert missing == pytest.approx(needs - target, rel=0.01)
    assert margin == format_bytes(budget - target)
    for fix in ("offloading optimizer state", "sharding across GPUs", "low-bit optimizer"):
        assert fix in message


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("-3GB", r"budget '-3GB' must be positive, e\.g\. '24GiB'"),
        ("lots", r"budget 'lots' is not a size; give a number and a unit such as '24GiB'"),
        (0, r"budget 0 must be positive"),
        ("200GiB", r"budget '200GiB' \(200\.00 GiB\) is more than h100-80gb has \(79\.\d\d GiB\)"),
    ],
)
def test_invalid_budgets_name_the_value_and_the_fix(budget, says):
    with pytest.raises(InvalidInputError, match=says):
        memfit.plan(build, BATCH, budget=budget, device="h100-80gb")


def test_a_fraction_is_of_the_device():
    spec = get_device("h100-80gb")
    plan = memfit.plan(build, BATCH, budget="0.5", device=spec)
    assert plan.budget == spec.memory_bytes // 2 and plan.techniques == ()


WITHOUT_FUSED_OPTIMIZER = tuple(a for a in ON_THE_GPU if a != "fused_optimizer")


@pytest.mark.parametrize(
    ("optimizer", "allow", "hinted"),
    [
        ("adamw", WITHOUT_FUSED_OPTIMIZER, True),
        ("adamw", ON_THE_GPU, False),  # the planner made the step fused itself
        ("adamw-fused", ON_THE_GPU, False),
    ],
)
@pytest.mark.slow
def test_infeasible_names_a_fused_optimizer_when_its_temporaries_make_the_peak(
    optimizer, allow, hinted
):
    params = sum(p.numel() * p.element_size() for p in build().parameters())
    budget = 3 * params + 4096  # the smallest plan peaks in the optimizer step
    with pytest.raises(BudgetInfeasibleError) as info:
        memfit.plan(build, BATCH, budget=budget, optimizer=optimizer, allow=allow)
    match = re.search(
        r"without the (\S+ \S+) of temporaries that adamw's step holds", str(info.value)
    )
    assert (match is not None) == hinted
    if hinted:  # foreach AdamW holds sqrt(exp_avg_sq), one value per weight (torch/optim/adam.py)
        assert parse_bytes(match.group(1).replace(" ", "")) >= params


@pytest.mark.slow
def test_plans_for_compiled_models_keep_to_what_compile_keeps(midway):
    # lean blocks and selective checkpointing lose their memory under torch.compile
    plan = memfit.plan(build, BATCH, budget=midway, compile=True)
    names = {type(t).__name__ for t in plan.techniques}
    assert not names & {"LeanAutocast", "FusedGatedMLP"}, plan.label
    assert all(not c.save for c in plan.of(Checkpoint))  # full checkpointing only
    assert all(c.modules and all(m.startswith("layers.") and m.count(".") == 1 for m in c.modules)
               for c in plan.of(Checkpoint))  # fmt: skip
    assert any("planned for torch.compile" in note for note in plan.notes)
    assert plan.profile.peak_reserved <= midway * 0.98


def test_allow_takes_one_name_as_a_string(midway):
    """allow="micro_batch" is that technique, not the letters of its name (the command line's
    --allow micro_batch: test_cli_plan.py)."""
    plan = memfit.plan(build, BATCH, budget=midway, allow="micro_batch")
    assert plan.techniques and all(isinstance(t, MicroBatch) for t in plan.techniques)
