"""A real snapshot: three AdamW steps of a two-block MLP on an H200 (bench/snapshot_fixture.py).

The fixture's ``.json`` holds what PyTorch's own counters said in that run; the replay must agree
with them to the byte, and the categories must add up the way AdamW does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfit.profile import Category, Phase
from memfit.report import analyze_fragmentation, load_snapshot, report, snapshot_profile

FIXTURES = Path(__file__).parent / "fixtures"


def _load(name: str):
    path = FIXTURES / f"{name}.pickle"
    if not path.exists():
        pytest.skip(f"fixture {path.name} not taken yet (python bench/snapshot_fixture.py)")
    counters = json.loads(path.with_suffix(".json").read_text())
    return (*snapshot_profile(load_snapshot(path), name=path.name), counters)


@pytest.mark.parametrize("name", ["tiny_train", "tiny_train_meta"])
def test_replay_matches_pytorchs_counters(name: str) -> None:
    profile, trace, counters = _load(name)
    assert profile.peak_allocated == counters["max_memory_allocated"]
    assert profile.peak_reserved == counters["max_memory_reserved"]
    assert int(trace.allocated[-1]) == counters["memory_allocated"]
    assert int(trace.reserved[-1]) == counters["memory_reserved"]


@pytest.mark.parametrize("name", ["tiny_train", "tiny_train_meta"])
def test_categories_add_up_like_adamw(name: str) -> None:
    profile, trace, counters = _load(name)
    cats = profile.by_category
    assert cats[Category.GRAD] == cats[Category.PARAM]  # one gradient per weight
    assert cats[Category.OPTIMIZER] == 2 * cats[Category.PARAM]  # exp_avg and exp_avg_sq
    assert cats[Category.OTHER] >= 32 * 2**20  # cuBLAS workspaces, kept for the process
    assert profile.peak_phase is Phase.OPTIMIZER
    transitions = sum(
        1
        for a, b in zip(trace.phases, trace.phases[1:], strict=False)
        if a is Phase.FORWARD and b is Phase.BACKWARD
    )
    assert transitions == counters["steps"]


def test_module_names_come_from_metadata() -> None:
    profile, _, _ = _load("tiny_train_meta")
    names = {m.fqn: m for m in profile.modules}
    assert names["blocks.0.up"].module_type == "Linear"
    assert names["blocks.0"].activation_bytes > names["blocks.0.up"].activation_bytes


def test_fragmentation_and_report(tmp_path: Path) -> None:
    profile, trace, _ = _load("tiny_train")
    frag = analyze_fragmentation(trace)
    assert frag.live_peak == profile.peak_allocated
    assert frag.live_peak <= frag.ideal <= frag.reserved_peak
    page = report(profile, tmp_path / "r.html", fragmentation=frag).read_text()
    assert page.count("<svg") == 4
