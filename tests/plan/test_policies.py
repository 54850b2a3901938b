"""The cost model's pieces on hand-checkable inputs: the knapsack, the policy ladder, screening."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from memfit.plan.blocks import BlockStats, OpGroup
from memfit.plan.candidates import Baseline, screen
from memfit.plan.policies import Policy, _knapsack, block_policies
from memfit.profile import Category, MemoryProfile
from memfit.techniques import ChunkedLoss
from memfit.units import MiB


def brute_force(values, weights, cap):
    """The best total value of any subset within ``cap``, by trying all of them."""
    best = 0.0
    for mask in itertools.product((False, True), repeat=len(values)):
        chosen = np.array(mask)
        if weights[chosen].sum() <= cap:
            best = max(best, values[chosen].sum())
    return best


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 1.0])
def test_knapsack_is_optimal(seed, fraction):
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 50, size=9).astype(float)
    weights = rng.integers(1, 40, size=9).astype(float)
    cap = fraction * weights.sum()
    chosen = _knapsack(values, weights, cap)
    assert chosen.dtype == bool and chosen.shape == values.shape
    assert weights[chosen].sum() <= cap
    assert values[chosen].sum() == brute_force(values, weights, cap)


def test_knapsack_prefers_value_over_greedy_ratio():
    # greedy by value/weight takes item 0 (ratio 1.2) and then nothing else fits
    values, weights = np.array([12.0, 10.0, 10.0]), np.array([10.0, 9.0, 9.0])
    chosen = _knapsack(values, weights, 18.0)
    assert chosen.tolist() == [False, True, True]  # 20 > 12


STATS = BlockStats(
    name="layers.0",
    forward_s=10.0,
    saved_bytes=1000,
    groups=(
        OpGroup("mm", 400, 5.0),
        OpGroup("gelu", 200, 1.0),
        OpGroup("_scaled_dot_product_flash_attention", 300, 3.0),
        OpGroup("native_layer_norm", 100, 0.5),
        OpGroup("view", 500, 0.1),  # a view: never worth keeping
        OpGroup("add", 0, 0.4),  # no output bytes of its own
    ),
    kept_full_bytes=50,
    forward_ops=20,
)


def test_policy_ladder():
    op_s = 0.01
    policies = block_policies(STATS, op_s, levels=(0.2, 0.4, 0.6))
    none, full, *selective = policies
    assert none == Policy("none", (), 1000, 0.0)
    assert full == Policy("full", (), 50, 10.0)
    assert selective, "levels between none and full give selective policies"
    groups = [g for g in STATS.groups if g.op not in ("view", "add")]
    values = np.array([g.seconds for g in groups])
    weights = np.array([g.output_bytes for g in groups], dtype=float)
    expected = []
    for level in (0.2, 0.4, 0.6):
        best = brute_force(values, weights, level * weights.sum())
        expected.append(best)
    for policy in selective:
        assert policy.kind == "selective"
        assert "view" not in policy.save and "add" not in policy.save
        kept = {g.op: g for g in groups if g.op in policy.save}
        saved_s = sum(g.seconds for g in kept.values())
        assert saved_s in expected  # an optimal choice at one of the levels
        assert policy.kept_bytes == sum(g.output_bytes for g in kept.values()) + 50
        assert policy.recompute_s == pytest.approx(10.0 - saved_s + 2 * 20 * op_s)
        # between full and none on both axes
        assert full.kept_bytes < policy.kept_bytes <= none.kept_bytes
    assert len({p.save for p in selective}) == len(selective)  # no duplicates
    # a larger cap keeps more: the expensive matmul once it fits (level 0.6: 600 of 1000 bytes)
    assert [p.kept_bytes for p in selective] == sorted(p.kept_bytes for p in selective)
    assert "mm" in selective[-1].save


def profile(peak_allocated: int, static: int) -> MemoryProfile:
    return MemoryProfile(
        source="estimate",
        model="toy",
        device="h100-80gb",
        device_memory=80 * 1024 * MiB,
        precision="bf16-mixed",
        optimizer="adamw",
        batch="x=float32[8,4]",
        peak_allocated=peak_allocated,
        peak_reserved=peak_allocated * 11 // 10,
        by_category={
            Category.PARAM: static // 3,
            Category.OPTIMIZER: static - static // 3,
            Category.ACTIVATION: peak_allocated - static,
        },
    )


def test_screening_trades_memory_for_time():
    baseline = Baseline(
        profile(peak_allocated=100 * MiB, static=30 * MiB),
        step_s=1.0,
        micro_extra_s=0.11,
        grad_bytes=10 * MiB,
        chunked_saving=5 * MiB,
        chunked_extra_s=0.05,
    )
    policies = [
        Policy("none", (), 15 * MiB, 0.0),
        Policy("full", (), 1 * MiB, 0.2),
        Policy("selective", ("mm",), 6 * MiB, 0.1),
    ]
    blocks = ["layers.0", "layers.1", "layers.2", "layers.3"]
    candidates = screen(baseline, policies, blocks, 15 * MiB, [1, 2, 4], [1, 8])
    # none once, every other policy on the first k blocks for each k
    assert len(candidates) == (1 + 2 * len(blocks)) * 3 * 2
    by_key = {(c.policy.kind, len(c.blocks), c.micro_batches, c.chunks): c for c in candidates}
    unmodified = by_key["none", 0, 1, 1]
    assert unmodified.peak_allocated == 100 * MiB and unmodified.step_s == 1.0
    assert unmodified.techniques(ChunkedLoss(1)) == ()
    for kind in ("full", "selective"):
        peaks = [by_key[kind, k, 1, 1].peak_allocated for k in range(1, 5)]
        times = [by_key[kind, k, 1, 1].step_s for k in range(1, 5)]
        assert peaks == sorted(peaks, reverse=True) and peaks[-1] < unmodified.peak_allocated
        assert times == sorted(times) and times[0] > unmodified.step_s
    assert by_key["full", 4, 1, 1].peak_allocated < by_key["selective", 4, 1, 1].peak_allocated
    assert by_key["full", 4, 1, 1].step_s > by_key["selective", 4, 1, 1].step_s
    # micro-batches: less memory for the batch, what a traced second one added each
    for n_small, n_large in ((1, 2), (2, 4)):
        small, large = by_key["none", 0, n_small, 1], by_key["none", 0, n_large, 1]
        assert large.peak_allocated < small.peak_allocated and large.step_s > small.step_s
    assert by_key["none", 0, 4, 1].step_s == pytest.approx(1.0 + 3 * 0.11)
    chunked = by_key["none", 0, 1, 8]
    assert unmodified.peak_allocated - chunked.peak_allocated == 5 * MiB
    assert chunked.step_s == pytest.approx(1.05)
    techniques = by_key["full", 2, 4, 8].techniques(ChunkedLoss(1))
    assert [type(t).__name__ for t in techniques] == ["Checkpoint", "MicroBatch", "ChunkedLoss"]
    assert techniques[0].modules == ("layers.0", "layers.1") and techniques[1].n == 4


def test_the_solver_writes_nothing_to_standard_output(capfd) -> None:
    """A Qwen2-shaped block's knapsack (24 layers, hidden 896), on which HiGHS 1.12 prints from
    C++ whatever its options say: stdout is ``memfit plan --format json``'s JSON."""
    values = np.array([4, 72, 24, 12, 16, 8, 8, 18.245343854398385, 36, 8, 8, 8, 4]) * 1e-5
    weights = np.array(
        [7570432, 75959296, 46170112, 9437184, 12582912, 1024, 32768, 94371840, 132120576,
         4194304, 29360128, 32768, 39845888], dtype=float,
    )  # fmt: skip
    chosen = _knapsack(values, weights, 0.6 * weights.sum())
    assert capfd.readouterr().out == ""
    assert weights[chosen].sum() <= 0.6 * weights.sum()
    # the optimum, by enumeration of the 2^13 choices
    best = max(
        (values[list(c)].sum() for r in range(14) for c in itertools.combinations(range(13), r)
         if weights[list(c)].sum() <= 0.6 * weights.sum()),
    )  # fmt: skip
    assert values[chosen].sum() == pytest.approx(best)
