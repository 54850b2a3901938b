"""The step's clipping and accumulation: the textbook loops' updates, predicted, and refused
where a technique cannot run with them."""

from __future__ import annotations

import json

import pytest
import torch

import memfit
from memfit.cli import main
from memfit.errors import InvalidInputError
from memfit.profile import Category
from memfit.step.train_step import TrainStep
from memfit.technique_rules import allowed_with_options, check_step_options
from memfit.techniques import OptimizerInBackward, parse_allow
from memfit.trace.estimate import trace_step
from tests.helpers import tiny_gpt2, token_batch
from tests.test_cli import write_model


def _batches() -> list[dict]:
    first = token_batch(ignore=False)
    return [first, {k: v.flip(0) for k, v in first.items()}, first, first]


def test_clipping_is_clip_grad_norm_before_the_step() -> None:
    expected, model = tiny_gpt2(), tiny_gpt2()
    reference = torch.optim.AdamW(expected.parameters(), lr=1e-2)
    for batch in _batches():
        reference.zero_grad()
        expected(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(expected.parameters(), 0.05)
        reference.step()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = TrainStep(model, optimizer, clip_grad_norm=0.05, device_type="cpu")
    for batch in _batches():
        step(batch)
    for a, b in zip(expected.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_accumulation_updates_every_nth_batch_with_the_mean_gradient() -> None:
    expected, model = tiny_gpt2(), tiny_gpt2()
    reference = torch.optim.SGD(expected.parameters(), lr=0.1, momentum=0.9)
    batches = _batches()
    for pair in (batches[:2], batches[2:]):
        reference.zero_grad()
        for batch in pair:
            (expected(**batch).loss * 0.5).backward()
        reference.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = TrainStep(model, optimizer, accumulate=2, device_type="cpu")
    initial = [p.detach().clone() for p in model.parameters()]
    loss = step(batches[0])
    assert all(torch.equal(a, b) for a, b in zip(initial, model.parameters(), strict=True))
    assert torch.equal(loss, tiny_gpt2()(**batches[0]).loss.detach())  # the batch's own loss
    for batch in batches[1:]:
        step(batch)
    for a, b in zip(expected.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_accumulation_is_predicted_with_the_gradients_alive_throughout() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256), torch.nn.Tanh(), torch.nn.Linear(256, 256)
    )
    batch = torch.randn(512, 256)
    grads = sum(p.numel() * 4 for p in model.parameters())
    traces = {
        n: trace_step(model, batch, optimizer="adamw", precision="fp32", accumulate=n)
        for n in (1, 2, 4)
    }
    one, two, four = (traces[n].profile for n in (1, 2, 4))
    # the second batch's forward and backward run with every gradient of the first alive
    assert two.by_category[Category.GRAD] >= grads > one.by_category[Category.GRAD]
    assert two.peak_allocated > one.peak_allocated
    assert four.peak_allocated == two.peak_allocated  # the third batch is as the second
    # per batch: forward and backward once, the update's time shared by the batches (CPU and
    # GPU overlapped: the update's quarter less shortens the step by at most its CPU and GPU
    # time together, and by something, since the step ends with the update)
    record = traces[4].record
    assert (record.passes, record.batches_per_update) == (2, 4)
    assert (traces[1].record.passes, traces[1].record.batches_per_update) == (1, 1)
    steady = "optimizer1" in record.marks
    update = [
        op
        for op in record.ops
        if op.stage not in ("forward", "backward") and not (steady and op.stage == "optimizer0")
    ]
    update_s = sum(op.host_s + op.seconds for op in update)
    assert 0 < two.step_time_s - four.step_time_s <= update_s / 4 * (1 + 1e-9)


def test_clipping_is_traced() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
    batch = torch.randn(4, 64)
    plain = trace_step(model, batch, precision="fp32")
    clipped = trace_step(model, batch, precision="fp32", clip_grad_norm=1.0)
    assert any("norm" in op.op for op in clipped.record.ops)
    assert not any("norm" in op.op for op in plain.record.ops)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (dict(clip_grad_norm=0.0), "clip_grad_norm=0.0 must be a positive number"),
        (dict(accumulate=0), "accumulate=0 must be an integer >= 1"),
        (dict(accumulate=2.5), "accumulate=2.5 must be an integer"),
    ],
)
def test_bad_values_are_refused(options, says) -> None:
    with pytest.raises(InvalidInputError, match=says):
        check_step_options((), **options)
    with pytest.raises(InvalidInputError, match=says):
        TrainStep(tiny_gpt2(), None, **options)


def test_the_planner_leaves_out_what_cannot_run_or_refuses_it_by_name() -> None:
    defaults = parse_allow(None)
    assert "optimizer_in_backward" in defaults
    allowed, notes = allowed_with_options(defaults, named=False, clip_grad_norm=1.0)
    assert "optimizer_in_backward" not in allowed and "checkpoint" in allowed
    assert "offload_optimizer" not in allowed  # its updates start before backward ends too
    why = "clipping by global norm needs every gradient before the first update"
    assert notes == [f"{name} left out: {why}" for name in defaults if name in (
        "optimizer_in_backward", "offload_optimizer"
    )]  # fmt: skip
    assert allowed_with_options(defaults, named=False) == (defaults, [])
    with pytest.raises(InvalidInputError, match="cannot run with accumulate=8"):
        allowed_with_options(("optimizer_in_backward",), named=True, accumulate=8)


def test_estimate_refuses_a_plan_that_cannot_run_with_the_options() -> None:
    with pytest.raises(InvalidInputError, match="optimizer_in_backward cannot run with accum"):
        memfit.estimate(tiny_gpt2(), token_batch(), accumulate=2, plan=[OptimizerInBackward()])


def test_command_line_options(tmp_path, capsys) -> None:
    path = write_model(tmp_path)
    common = ["--input", "float32[16,32]", "--loss-fn", f"{path}:loss", "--format", "json"]
    profiles = {}
    for accumulate in ("1", "2"):
        code = main(["estimate", f"{path}:build_model", *common, "--accumulate", accumulate])
        assert code == 0
        profiles[accumulate] = json.loads(capsys.readouterr().out)["profile"]
    assert profiles["2"]["peak_allocated"] > profiles["1"]["peak_allocated"]
    assert profiles["2"]["step_time_s"] < profiles["1"]["step_time_s"]
    code = main(["estimate", f"{path}:build_model", *common, "--clip-grad-norm", "-1"])
    assert code == 2
    assert "clip_grad_norm=-1.0 must be a positive number" in capsys.readouterr().err
