"""Plan as data: JSON round trip, hand-made plans, estimate(plan=...), the model a plan is for."""

from __future__ import annotations

import json

import pytest
import torch

import memfit
from memfit.errors import InvalidInputError
from memfit.plan.plan import Plan
from memfit.techniques import (
    Checkpoint,
    ChunkedLoss,
    LeanAutocast,
    MicroBatch,
    MixedPrecision,
    model_fingerprint,
)
from memfit.zoo.gpt2 import GPT2, GPT2Config

from .helpers import BATCH, CONFIG, build

LAYERS = ("layers.*",)


@pytest.mark.slow
def test_json_round_trip(midway_plan):
    text = midway_plan.to_json()
    again = Plan.from_json(text)
    assert again == midway_plan
    assert again.to_json() == text
    data = json.loads(text)
    assert data["label"] == midway_plan.label
    assert data["profile"]["peak_reserved"] == midway_plan.profile.peak_reserved
    # the tiny model's multi-tensor AdamW step is made fused first, then blocks checkpointed
    assert [t["type"] for t in data["techniques"]][:2] == ["fused_optimizer", "checkpoint"]


def test_hand_made_plan_round_trips():
    plan = Plan(
        techniques=(
            MixedPrecision("fp16-mixed"),
            Checkpoint(("layers.0", "layers.1"), save=("mm", "bmm")),
            MicroBatch(4),
            ChunkedLoss(8, head="head", labels_key="targets"),
        )
    )
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.label == (
        "fp16-mixed + checkpoint[selective] layers.0,layers.1 + micro-batch x4 + chunked loss x8"
    )
    assert plan.overhead is None  # no predictions in a hand-made plan
    assert plan.of(MicroBatch) == [MicroBatch(4)]


def test_lean_autocast_names_its_blocks_and_older_plans_mean_the_whole_model():
    plan = Plan(techniques=(LeanAutocast(modules=("layers.0", "layers.1")),))
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.label == "lean autocast layers.0,layers.1"
    older = Plan.from_dict({"techniques": [{"type": "lean_autocast"}]})  # before modules=
    assert older.techniques == (LeanAutocast(),) and older.label == "lean autocast"


def test_unknown_technique_names_in_a_plan():
    with pytest.raises(
        InvalidInputError, match="unknown technique 'offload'; known: mixed_precision"
    ):
        Plan.from_dict({"techniques": [{"type": "offload", "optimizer": True}]})
    with pytest.raises(InvalidInputError, match="plan is not valid JSON"):
        Plan.from_json("{techniques: []")
    # a technique the tracer does not model is refused, not silently left out of the estimate
    with pytest.raises(
        InvalidInputError, match=r"cannot estimate 'offload'.*known: MixedPrecision"
    ):
        memfit.estimate(build, BATCH, plan=[Checkpoint(LAYERS), "offload"])


@pytest.mark.slow
def test_a_plan_for_another_model_is_refused(midway_plan):
    wider = dict(CONFIG, dim=64)
    with pytest.raises(InvalidInputError, match="made for another model"):
        memfit.estimate(lambda: GPT2(GPT2Config(**wider)), BATCH, plan=midway_plan)
    model = GPT2(GPT2Config(**wider))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidInputError, match="made for another model"):
        memfit.apply(midway_plan, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not memfit.apply.applied(model)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert all(m.forward.__func__ is type(m).forward for m in model.modules())


@pytest.mark.parametrize(
    "techniques",
    [
        (Checkpoint(LAYERS),),
        (Checkpoint(LAYERS, save=("mm", "addmm")),),
        (MicroBatch(2),),
        (ChunkedLoss(8),),
    ],
    ids=["checkpoint", "selective", "micro-batch", "chunked-loss"],
)
def test_each_technique_lowers_the_predicted_activations(unmodified, techniques):
    # a hand-made Plan, for this model: estimate checks the fingerprint
    plan = Plan(techniques=techniques, model_fingerprint=model_fingerprint(build()))
    planned = memfit.estimate(build, BATCH, plan=plan)
    # the model's saved activations when forward ends (the first micro-batch's, if split)
    assert planned.modules[0].fqn == unmodified.modules[0].fqn == ""
    kept, kept_before = planned.modules[0].activation_bytes, unmodified.modules[0].activation_bytes
    assert 0 < kept < kept_before
    assert planned.peak_allocated < unmodified.peak_allocated
    assert planned.plan == plan.label
    # what does not depend on the plan is unchanged
    for name in ("param_bytes", "grad_bytes"):
        assert getattr(planned.modules[0], name) == getattr(unmodified.modules[0], name)


@pytest.mark.slow
def test_techniques_add_up(unmodified, all_checkpointed):
    everything = memfit.estimate(
        build, BATCH, plan=[Checkpoint(LAYERS), MicroBatch(4), ChunkedLoss(8)]
    )
    assert everything.peak_allocated < all_checkpointed.peak_allocated < unmodified.peak_allocated
    assert everything.step_time_s > all_checkpointed.step_time_s > unmodified.step_time_s


def test_mixed_precision_in_a_plan_overrides_the_precision(unmodified):
    fp32 = memfit.estimate(build, BATCH, plan=[MixedPrecision("fp32")])
    assert unmodified.precision == "bf16-mixed" and fp32.precision == "fp32"
    # without autocast's bf16 copies of weights and activations, fp32 keeps more
    assert fp32.modules[0].activation_bytes > unmodified.modules[0].activation_bytes


@pytest.mark.slow
def test_a_planned_plan_applies_and_trains_like_the_plain_step(midway_plan):
    from memfit.step.train_step import TrainStep

    torch.manual_seed(1)
    batch = {"input_ids": torch.randint(0, 1000, (2, 32))}
    batch["labels"] = batch["input_ids"].clone()
    plain, model = build(), build()
    # the step runs in the precision the plan was made for, unless told otherwise
    step = memfit.apply(midway_plan, model)
    assert step.precision.name == midway_plan.profile.precision == "bf16-mixed"
    midway_plan.undo(model)
    # the plan makes AdamW's step fused (FusedOptimizer): the plain step uses fused=True
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    step = memfit.apply(midway_plan, model, opt, precision="fp32")  # bit for bit on a CPU
    plain_step = TrainStep(plain, torch.optim.AdamW(plain.parameters(), lr=0.1, fused=True))
    # bit for bit, unless the plan sums something in another order (the chunked loss: the tied
    # head's gradient slice by slice): then its gradients agree to float32 rounding, and its
    # update is not compared (Adam's first step is lr * sign(gradient) where a gradient is
    # within rounding of zero)
    rounding = any(isinstance(t, ChunkedLoss) for t in midway_plan.techniques)
    losses = []
    for run in (step, plain_step):
        torch.manual_seed(2)  # the same dropout masks (checkpointing replays the RNG state)
        losses.append(run.accumulate(batch) if rounding else run(batch))
    pairs = list(zip(plain.named_parameters(), model.named_parameters(), strict=True))
    if rounding:
        torch.testing.assert_close(*losses, rtol=1e-6, atol=1e-6)
        for (name, a), (_, b) in pairs:
            assert a.grad is not None and b.grad is not None, name
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7, msg=name)
        midway_plan.undo(model)
        return
    assert torch.equal(*losses)
    midway_plan.undo(model)
    for (name, a), (_, b) in pairs:
        assert torch.equal(a, b), name
