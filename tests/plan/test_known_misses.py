"""Plans whose kind is known to miss its prediction say so (checkpointed convolutions)."""

from __future__ import annotations

import torch
from torch import nn

import memfit
from memfit.plan.settings import CONVOLUTION_MARGIN


class ConvBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.norm(self.conv(x)))


class MlpBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


def _plan(model: nn.Module, spec: str, fraction: float = 0.8, **settings) -> memfit.Plan:
    unmodified = memfit.estimate(model, spec, device="h200", precision="fp32")
    return memfit.plan(
        model,
        spec,
        budget=int(unmodified.peak_reserved * fraction),
        device="h200",
        precision="fp32",
        allow=["checkpoint"],
        **settings,
    )


def test_a_plan_recomputing_convolutions_keeps_its_margin_free():
    model = nn.Sequential(*[ConvBlock(32) for _ in range(8)])
    plan = _plan(model, "float32[16,32,64,64]")
    assert "checkpoint" in plan.label
    assert plan.profile.peak_reserved <= (1 - CONVOLUTION_MARGIN) * plan.budget
    assert any(
        "recomputes convolutions" in n and "planned 5% below the budget instead of 2%" in n
        for n in plan.notes
    )
    # the user's own margin stands, and the note names the one that would have kept to it
    own = _plan(model, "float32[16,32,64,64]", margin=0.02)
    assert (1 - CONVOLUTION_MARGIN) * own.budget < own.profile.peak_reserved <= 0.98 * own.budget
    assert any("recomputes convolutions" in n and "margin=0.05" in n for n in own.notes)
    kept = _plan(model, "float32[16,32,64,64]", margin=CONVOLUTION_MARGIN)
    assert not any("convolutions" in n for n in kept.notes)


def test_other_checkpointed_plans_do_not():
    model = nn.Sequential(*[MlpBlock(256) for _ in range(8)])
    plan = _plan(model, "float32[4096,256]", fraction=0.95)
    assert "checkpoint" in plan.label
    assert not any("convolutions" in n for n in plan.notes)
    assert plan.profile.peak_reserved > 0.95 * plan.budget  # held to the usual 2% only
