"""``memfit.estimate`` predicts a plan by applying its techniques to the module you pass (on fake
tensors) and undoing them: afterwards the module is exactly as it was, whatever the plan."""

from __future__ import annotations

import pytest

import memfit
from memfit.techniques import (
    Checkpoint,
    ChunkedLoss,
    Freeze,
    FusedGatedMLP,
    FusedOptimizer,
    LeanAutocast,
    MicroBatch,
    MixedPrecision,
    OffloadActivations,
    OffloadOptimizer,
    OptimizerInBackward,
    PureBF16,
    Sharding,
)
from tests.helpers import tiny_llama, token_batch
from tests.kept import assert_same, fingerprint
from tests.trace.test_sharding import needs_fake_collectives

PLANS = {
    "checkpoint": ([Checkpoint(("layers.*",))], "bf16-mixed"),
    "fused-mlp+lean": ([FusedGatedMLP(("layers.*.mlp",)), LeanAutocast()], "bf16-mixed"),
    "chunked-loss": ([ChunkedLoss(4)], "bf16-mixed"),
    "micro-batch": ([MicroBatch(2)], "bf16-mixed"),
    "optimizer-in-backward": ([OptimizerInBackward()], "bf16-mixed"),
    "freeze": ([Freeze(("layers.0",))], "bf16-mixed"),
    "offload-activations": ([OffloadActivations(("layers.*",), min_bytes=0)], "bf16-mixed"),
    "offload-optimizer": ([OffloadOptimizer()], "bf16-mixed"),
    "fused-optimizer": ([FusedOptimizer()], "bf16-mixed"),
    "pure-bf16": ([PureBF16(), MixedPrecision("bf16")], "bf16"),
    "pure-bf16-precision": ([], "bf16"),
    "sharding": ([Sharding(gpus=2)], "bf16-mixed"),
    "fp32": ([], "fp32"),
}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=needs_fake_collectives) if n == "sharding" else n for n in PLANS],
)
def test_estimate_leaves_the_module_exactly_as_it_was(name: str) -> None:
    plan, precision = PLANS[name]
    model = tiny_llama().float()
    model(**token_batch()).loss.backward()  # gradients exist before, and must stay
    before = fingerprint(model)
    profile = memfit.estimate(model, token_batch(), plan=plan, precision=precision)
    assert profile.peak_allocated > 0
    assert_same(before, fingerprint(model))
    assert not memfit.apply.applied(model)
