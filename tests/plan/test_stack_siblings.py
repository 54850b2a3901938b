"""Stack siblings: a stack's other layers join the blocks when they keep as much for backward."""

from __future__ import annotations

from torch import nn

import memfit
from memfit.plan.stack_siblings import with_large_siblings
from memfit.structure.blocks import find_blocks


class ConvStage(nn.Module):
    """Few parameters, a large feature map: MobileViT's early MobileNet layers in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.act = nn.Conv2d(4, 16, 1), nn.SiLU()
        self.project = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return x + self.project(self.act(self.expand(x)))


class AttentionStage(nn.Module):
    """Many parameters, a small feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 4, 4, stride=4)
        self.mix = nn.Sequential(nn.Linear(4, 512), nn.GELU(), nn.Linear(512, 4))
        self.up = nn.Upsample(scale_factor=4)

    def forward(self, x):
        small = self.down(x)
        mixed = self.mix(small.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.up(mixed)


class Hybrid(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList([ConvStage(), ConvStage(), AttentionStage(), AttentionStage()])

    def forward(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


def test_the_tree_alone_keeps_the_larger_class_by_parameters() -> None:
    assert find_blocks(Hybrid()) == ["stages.2", "stages.3"]


def test_siblings_that_keep_as_much_join_in_model_order() -> None:
    saved = {"stages.0": 100, "stages.1": 100, "stages.2": 40, "stages.3": 40}
    assert with_large_siblings(Hybrid(), ["stages.2", "stages.3"], saved) == [
        "stages.0",
        "stages.1",
        "stages.2",
        "stages.3",
    ]
    small = {**saved, "stages.0": 9, "stages.1": 10}  # under a quarter of the blocks' 40: out
    assert with_large_siblings(Hybrid(), ["stages.2", "stages.3"], small) == [
        "stages.1",
        "stages.2",
        "stages.3",
    ]
    assert with_large_siblings(Hybrid(), [], saved) == []


def test_the_planner_checkpoints_the_large_early_stages() -> None:
    spec = "float32[64,4,64,64]"
    stages = tuple(f"stages.{i}" for i in range(4))
    unmodified = memfit.estimate(Hybrid, spec, device="h200", precision="fp32")
    every = memfit.estimate(
        Hybrid, spec, device="h200", precision="fp32", plan=[memfit.Checkpoint(modules=stages)]
    )
    budget = int(every.peak_reserved / 0.95 * 1.02)  # checkpointing all four fits (5% margin)
    assert budget < unmodified.peak_reserved * 0.95  # and some checkpointing is needed
    plan = memfit.plan(
        Hybrid, spec, budget=budget, device="h200", precision="fp32", allow=["checkpoint"]
    )
    checkpointed = [m for t in plan.of(memfit.Checkpoint) for m in t.modules]
    # find_blocks alone offers stages.2 and .3, which keep less: the plan starts at stages.0
    assert checkpointed[0] == "stages.0", plan.label
