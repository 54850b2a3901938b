"""Planning for N GPUs: the ways of sharding weighed, the plan, and the command line."""

from __future__ import annotations

import json

import pytest

import memfit
from memfit.cli import main
from memfit.errors import InvalidInputError
from memfit.plan.sharded import sharding_options
from memfit.techniques import Sharding
from tests.torch_support import needs_fake_collectives

from .helpers import BATCH, BUILDER_FILE, build


def test_the_ways_weighed_fastest_first_and_hsdp_only_across_nodes():
    units = ("blocks.*",)
    within = sharding_options(units, 8, per_node=8)
    assert within == [
        Sharding(8, units, keep_unsharded=units),
        Sharding(8, units),
        Sharding(8, units, offload=True),
    ]
    across = sharding_options(units, 1024, per_node=8)
    assert across[1] == Sharding(1024, units, replicate=128)
    assert across[1].shards == 8


@pytest.mark.parametrize("gpus", [0, 2.5, True])
def test_gpus_must_be_a_whole_number(gpus):
    with pytest.raises(InvalidInputError, match="whole number of GPUs"):
        memfit.plan(build, BATCH, budget="1GiB", gpus=gpus)


@pytest.mark.slow
@needs_fake_collectives
def test_a_tight_budget_shards_and_adds_one_gpu_techniques():
    loose = memfit.plan(build, BATCH, budget="60GiB", device="h100-80gb", gpus=2)
    first = loose.techniques[0]
    # the fastest way fits alone: the blocks kept gathered from forward to backward
    assert isinstance(first, Sharding) and first.keep_unsharded == first.units
    assert len(loose.techniques) == 1
    labels = [p.label for p in loose.frontier]
    assert "1 GPU, unmodified" in labels and sum(p.chosen for p in loose.frontier) == 1
    peak = loose.profile.peak_reserved
    tight = memfit.plan(
        build, BATCH, budget=int(peak * 0.93), device="h100-80gb", gpus=2, allow="checkpoint"
    )
    assert any(isinstance(t, Sharding) for t in tight.techniques)
    assert len(tight.techniques) >= 2  # with checkpointing
    assert tight.profile.peak_reserved <= peak * 0.93


@pytest.mark.slow
@needs_fake_collectives
def test_plan_gpus_then_estimate_that_plan_on_other_gpus(tmp_path, capsys):
    model = tmp_path / "tiny_lm.py"
    model.write_text(BUILDER_FILE)
    plan_file = tmp_path / "plan.json"
    common = [f"{model}:build", "--input", BATCH, "--device", "h100-80gb", "--no-cache"]
    assert main(["plan", *common, "--budget", "60GiB", "--gpus", "2", "--out", str(plan_file)]) == 0
    out = capsys.readouterr().out
    assert "sharding        FSDP2 over 2 GPUs" in out
    assert "reshard_after_forward=False" in out and "MixedPrecisionPolicy(" in out
    assert "all-gathers/reduce-scatters take" in out
    sharding = json.loads(plan_file.read_text())["techniques"][0]
    assert sharding["type"] == "sharding" and sharding["gpus"] == 2
    assert main(["estimate", *common, "--gpus", "4", "--plan", str(plan_file)]) == 0
    out = capsys.readouterr().out
    assert "plan: FSDP2 x4" in out
    assert main(["estimate", *common, "--plan", str(tmp_path / "missing.json")]) != 0
    assert "--plan" in capsys.readouterr().err
