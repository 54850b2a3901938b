"""A snapshot recorded without stacks: phases and categories from allocation order.

The real fixture: Hugging Face GPT-2 (bs 8, seq 1024, bf16-mixed, fused AdamW, Hugging Face
checkpointing), four steps on an H200, recorded with ``context=None`` (bench/diag_snapshot.py).
The expected figures come from the model's config, not from the snapshot.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memfit.profile import Category, Phase
from memfit.report import load_snapshot, snapshot_profile
from memfit.snapshot.order import ORDER_WARNING, infer_from_order
from memfit.snapshot.profile import categorize
from memfit.snapshot.trace import replay, round_size

FIXTURES = Path(__file__).parents[1]
REAL = FIXTURES / "trace" / "fixtures" / "hf_gpt2_ckpt_snapshot_h200.pickle"
TINY = FIXTURES / "snapshot" / "fixtures" / "tiny_train.pickle"


@pytest.fixture(scope="module")
def real():
    return snapshot_profile(load_snapshot(REAL), name=REAL.name)


def _gpt2_weights() -> tuple[int, int]:
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    params = list(model.parameters())
    return len(params), sum(round_size(p.numel() * 4) for p in params)


def test_the_real_run_is_classified_from_allocation_order(real) -> None:
    profile, _ = real
    count, weight_bytes = _gpt2_weights()
    by = profile.by_category
    assert abs(by[Category.PARAM] - weight_bytes) <= 512  # the weights (and one 4-byte block)
    # fused AdamW: exp_avg and exp_avg_sq per weight, and one step counter tensor per weight
    assert by[Category.OPTIMIZER] == 2 * weight_bytes + count * 512
    assert by[Category.ACTIVATION] > 1 << 30 and by[Category.TEMPORARY] > 1 << 30
    assert by.get(Category.OTHER, 0) < 0.02 * profile.peak_allocated
    assert sum(by.values()) == profile.peak_allocated
    assert profile.peak_phase is Phase.BACKWARD  # the loss's backward: fp32 logit gradients
    assert ORDER_WARNING in profile.warnings
    assert profile.modules == ()  # nothing names a module: the report says why


def test_the_real_run_has_four_steps_of_forward_backward_optimizer(real) -> None:
    _, trace = real
    runs = [trace.phases[0]] + [
        p for i, p in enumerate(trace.phases[1:], 1) if p is not trace.phases[i - 1]
    ]
    steps = [Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER]
    assert runs == [Phase.SETUP] + steps * 4
    # gradients: one per weight in each step, made in backward, freed by zero_grad
    categories = categorize(trace)
    grads = [a for a, c in zip(trace.allocations, categories, strict=True) if c is Category.GRAD]
    count, _ = _gpt2_weights()
    assert len(grads) == 4 * (count + 1)
    assert all(a.phase is Phase.BACKWARD for a in grads if a.size > 4)
    optimizer = [
        a for a, c in zip(trace.allocations, categories, strict=True) if c is Category.OPTIMIZER
    ]
    assert all(a.phase is Phase.OPTIMIZER for a in optimizer)


def _without_stacks(snapshot: dict) -> dict:
    strip = ("frames", "user_metadata")
    return {
        **snapshot,
        "device_traces": [
            [{k: v for k, v in e.items() if k not in strip} for e in trace]
            for trace in snapshot["device_traces"]
        ],
        "segments": [
            {**s, "blocks": [{k: v for k, v in b.items() if k != "frames"} for b in s["blocks"]]}
            for s in snapshot["segments"]
        ],
    }


def test_order_agrees_with_the_stacks_of_another_real_run() -> None:
    """The tiny fixture (3 foreach-AdamW steps of an MLP) has stacks: read without them, the
    allocation order gives nearly the same phases and categories."""
    snapshot = load_snapshot(TINY)
    with_stacks = replay(snapshot)
    expected = categorize(with_stacks)
    inferred = infer_from_order(replay(_without_stacks(snapshot)))
    assert inferred is not None
    same_phase = sum(a is b for a, b in zip(with_stacks.phases, inferred.phases, strict=True))
    assert same_phase >= 0.9 * with_stacks.num_events
    got = categorize(inferred)
    same = sum(a is b for a, b in zip(expected, got, strict=True))
    assert same >= 0.93 * len(expected)
    for category in (Category.PARAM, Category.GRAD, Category.OPTIMIZER):
        wanted = {k for k, c in enumerate(expected) if c is category}
        found = {k for k, c in enumerate(got) if c is category}
        assert wanted == found, category
    # at the peak: the same bytes in every category, but for the 64 KiB input (other: activation)
    for category in Category:
        assert abs(
            _at_peak(inferred, got, category) - _at_peak(with_stacks, expected, category)
        ) <= (64 << 10), category


def _at_peak(trace, categories, category) -> int:
    peak = trace.peak_index
    return sum(
        a.rounded
        for a, c in zip(trace.allocations, categories, strict=True)
        if c is category and a.start <= peak < a.end
    )


def test_no_burst_of_gradient_frees_leaves_the_trace_as_recorded() -> None:
    """As if gradients were kept between steps (zero_grad(set_to_none=False)): no step ends."""
    snapshot = _without_stacks(load_snapshot(TINY))
    first = snapshot["device_traces"][0]
    weight_sizes = {e["size"] for e in first[:20] if e["action"] == "alloc"}
    entries = [
        e for e in first if not (e["action"].startswith("free") and e["size"] in weight_sizes)
    ]
    stripped = {**snapshot, "device_traces": [entries]}
    assert infer_from_order(replay(stripped)) is None
