"""The planner when weights, gradients and optimizer state leave too little: the optimizer on
the host, host memory checked, the errors that name the figures."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import memfit
from memfit.cli import main
from memfit.errors import BudgetInfeasibleError
from memfit.plan.model_state import count_parameters, state_levels
from memfit.techniques import FusedOptimizer, OffloadOptimizer, default_allow
from memfit.units import MiB, format_bytes

WIDTH, DEPTH = 2048, 4
BATCH = f"float32[8,{WIDTH}]"
LINEAR = DEPTH * (WIDTH * WIDTH + WIDTH)  # weights and biases, all offloadable
BUILDER_FILE = f"""
from torch import nn

def build():
    return nn.Sequential(*[nn.Linear({WIDTH}, {WIDTH}) for _ in range({DEPTH})])
"""


def build() -> nn.Module:
    """Weights dominate: 16.8M parameters (268 MB of weights, gradients and AdamW state)."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(DEPTH)])


def _loss(output, batch):
    return output.float().pow(2).mean()


def _plan(**kwargs):
    return memfit.plan(build, BATCH, loss_fn=_loss, host_memory="16GiB", **kwargs)


def test_the_parameter_count_bounds_the_state_before_any_trace() -> None:
    trained, offloadable, frozen = count_parameters(build, BATCH, None, None)
    assert (trained, offloadable, frozen) == (LINEAR, LINEAR, 0)
    levels = state_levels(default_allow(), "bf16-mixed", "adamw", trained, offloadable)
    assert [level.label for level in levels] == ["optimizer in backward", "offload optimizer"]
    assert levels[0].state_bytes == 12 * LINEAR  # weights and AdamW state; gradients freed
    assert levels[1].techniques == (FusedOptimizer(), OffloadOptimizer(dtype="bfloat16"))
    assert levels[1].state_bytes == 2 * LINEAR  # bf16 working copies only
    assert "micro_batch" in levels[1].excludes
    fp32 = state_levels(default_allow(), "fp32", "adamw", trained, offloadable)
    assert fp32[-1].techniques[-1] == OffloadOptimizer(dtype="float32")
    for precision, optimizer in (("fp16-mixed", "adamw"), ("bf16-mixed", "sgd")):  # not offloaded
        labels = [x.label for x in state_levels(default_allow(), precision, optimizer, 1, 1)]
        assert "offload optimizer" not in labels
    with_low_bit = state_levels(
        default_allow() + ("low_bit_optimizer",), "bf16-mixed", "adamw", trained, offloadable
    )
    assert [x.label for x in with_low_bit][1] == "low bit optimizer + optimizer in backward"


NO_IN_BACKWARD = tuple(
    a for a in default_allow() if a not in ("offload_optimizer", "optimizer_in_backward")
)


def test_low_bit_state_keeping_the_gradients_only_without_in_backward() -> None:
    trained, offloadable, _ = count_parameters(build, BATCH, None, None)
    alone = state_levels(
        (*NO_IN_BACKWARD, "low_bit_optimizer", "pure_bf16"), "bf16-mixed", "adamw", trained, 0
    )
    assert [(x.label, x.state_bytes) for x in alone] == [
        ("low bit optimizer", int((8 + 2.03) * LINEAR)),  # weights, gradients, 8-bit moments
        ("pure bf16", 8 * LINEAR),
    ]
    with_it = state_levels(
        (*default_allow(), "low_bit_optimizer", "pure_bf16"), "bf16-mixed", "adamw", trained, 0
    )
    assert all("optimizer in backward" in x.label for x in with_it[:3])
    assert "low bit optimizer" not in [x.label for x in with_it]


@pytest.mark.slow
def test_allowed_low_bit_state_fits_a_budget_below_the_model_state() -> None:
    pytest.importorskip("torchao.optim")
    budget = 290 * MiB  # above the 268 MiB low-bit plan, below the unmodified 394 MiB
    plan = _plan(budget=budget, allow=(*NO_IN_BACKWARD, "low_bit_optimizer"))
    assert [type(t).__name__ for t in plan.techniques] == ["LowBitOptimizer"]
    assert plan.profile.peak_reserved <= budget
    assert [p.label for p in plan.frontier if p.chosen] == ["low bit optimizer"]


def test_the_error_asks_only_for_what_was_left_out() -> None:
    with pytest.raises(BudgetInfeasibleError) as info:
        _plan(budget=4 * MiB, allow=(*NO_IN_BACKWARD, "low_bit_optimizer"))
    message = str(info.value)
    assert "low bit optimizer: " in message and "--gpus N" in message
    assert "--allow pure_bf16" in message and "low_bit_optimizer" not in message.split("Fixes")[1]
    with pytest.raises(BudgetInfeasibleError) as info:
        _plan(budget=200 * MiB, allow=NO_IN_BACKWARD)
    assert "allow 'low_bit_optimizer'" in str(info.value)
    with pytest.raises(BudgetInfeasibleError) as info:  # allowed, but not for SGD
        _plan(budget=200 * MiB, allow=(*NO_IN_BACKWARD, "offload_optimizer"), optimizer="sgd")
    assert "allow 'offload_optimizer'" not in str(info.value)
    assert "allow 'low_bit_optimizer'" in str(info.value)


@pytest.mark.slow
def test_a_budget_below_the_model_state_plans_the_optimizer_on_the_host() -> None:
    budget = 200 * MiB  # below weights, gradients and AdamW state (16 B x 16.8M)
    plan = _plan(budget=budget)
    assert any(isinstance(t, OffloadOptimizer) for t in plan.techniques)
    assert plan.profile.peak_reserved <= budget
    assert dict(plan.profile.host_bytes) == {
        "master weights": 4 * LINEAR,
        "optimizer state": 8 * LINEAR,
        "gradients": 4 * LINEAR,
    }
    assert any(note.startswith("host memory: ") for note in plan.notes)
    assert plan.baseline_step_time_s is None  # the unmodified step was never traced
    # the plan trains as the plain step does (the CPU's fused AdamW on both sides)
    torch.manual_seed(1)
    batches = [torch.randn(8, WIDTH) for _ in range(2)]
    reference, planned = build(), build()
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, fused=True)
    ref_step = memfit.TrainStep(reference, ref_opt, loss_fn=_loss, precision="bf16-mixed",
                                device_type="cpu")  # fmt: skip
    opt = torch.optim.AdamW(planned.parameters(), lr=1e-3)
    step = memfit.apply(plan, planned, opt, loss_fn=_loss, device_type="cpu")
    for batch in batches:
        assert torch.equal(ref_step(batch), step(batch))
    masters = step.host_optimizer.master_state_dict()
    for name, param in reference.named_parameters():
        assert torch.equal(masters[name], param.detach()), name
    plan.undo(planned)


def test_short_host_memory_is_refused_naming_both_figures() -> None:
    with pytest.raises(BudgetInfeasibleError) as info:
        memfit.plan(build, BATCH, loss_fn=_loss, budget=200 * MiB, host_memory="1GiB")
    message = str(info.value)
    need = re.search(r"it needs (\S+ \S+) of host memory", message)
    assert need is not None and "the host has 1.00 GiB" in message
    assert need.group(1) == format_bytes(16 * LINEAR + 4 * 2**30)  # state + the process
    assert "--host-memory" in message


def test_a_budget_below_the_most_offloaded_plan_names_the_figures() -> None:
    with pytest.raises(BudgetInfeasibleError) as info:
        _plan(budget=4 * MiB)
    message = str(info.value)
    assert "budget 4.00 MiB cannot be met" in message
    assert f"optimizer state take {format_bytes(16 * LINEAR)}" in message
    for label, per_param in (("offload optimizer", 2), ("optimizer in backward", 12)):
        least = f"{label}: its model state alone takes at least {format_bytes(per_param * LINEAR)}"
        assert least in message
    assert "a larger budget" in message


def test_without_model_state_techniques_the_activation_error_stays() -> None:
    allow = [a for a in default_allow() if a not in ("offload_optimizer", "optimizer_in_backward")]
    with pytest.raises(BudgetInfeasibleError, match="offloading optimizer state to the host"):
        _plan(budget=200 * MiB, allow=allow)


def test_the_command_prints_host_memory(tmp_path, capsys) -> None:
    path = tmp_path / "wide.py"
    loss = "\n\ndef loss(output, batch):\n    return output.float().mean()\n"
    path.write_text(BUILDER_FILE + loss)
    code = main([
        "plan", f"{path}:build", "--input", BATCH, "--loss-fn", f"{path}:loss",
        "--budget", "200MiB", "--host-memory", "16GiB",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert f"host memory     {format_bytes(16 * LINEAR)}" in out
    assert "OffloadOptimizer(" in out
    code = main([
        "plan", f"{path}:build", "--input", BATCH, "--loss-fn", f"{path}:loss",
        "--budget", "200MiB", "--host-memory", "1GiB",
    ])  # fmt: skip
    assert code == 2
    assert "the host has 1.00 GiB" in capsys.readouterr().err


def test_a_level_whose_activation_plans_all_fail_names_its_own_peak(monkeypatch) -> None:
    # torchvision's DenseNet: every checkpointing candidate failed to trace, and the refusal
    # said "the most memory-saving plan traced needs 0 B reserved"
    import memfit.plan.search_phases as phases
    from memfit.plan.verify import Verified

    monkeypatch.setattr(
        phases,
        "trace_fastest_fitting",
        lambda candidates, target, static, *_: (None, Verified(static)),
    )
    with pytest.raises(BudgetInfeasibleError) as info:
        _plan(budget=100 * MiB)
    needs = re.search(r"offload optimizer: the most memory-saving plan traced needs (\S+) MiB",
                      str(info.value))  # fmt: skip
    assert needs is not None and float(needs.group(1)) > 100
