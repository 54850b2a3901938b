"""A snapshot explained: numbers worked out by hand from the synthetic training loop.

The loop (see tests/snapshot_fixtures.training_snapshot, 3 layers, 2 steps) peaks in the second
step's backward, at its first 1 MiB temporary: weights 12 MiB + grads 12 MiB (made in step 1) +
AdamW state 24 MiB + input 1 MiB + saved activations 6 MiB + the loss (512 B) + the temporary
1 MiB.
"""

from __future__ import annotations

import pytest

from memfit.devices import get_device
from memfit.profile import Category, Phase
from memfit.snapshot.profile import snapshot_profile
from memfit.snapshot.trace import replay, round_size

MiB = 2**20


def test_round_size_matches_the_allocator() -> None:
    assert [round_size(n) for n in (1, 512, 513, 4 * MiB)] == [512, 512, 1024, 4 * MiB]


@pytest.mark.parametrize("metadata", [False, True])
def test_peak_and_categories_by_hand(make_snapshot, metadata: bool) -> None:
    profile, trace = snapshot_profile(make_snapshot(metadata=metadata), name="run.pickle")
    assert profile.peak_allocated == 56 * MiB + 512
    assert profile.peak_reserved == 60 * MiB  # three 20 MiB segments
    assert dict(profile.by_category) == {
        Category.PARAM: 12 * MiB,
        Category.GRAD: 12 * MiB,
        Category.OPTIMIZER: 24 * MiB,
        Category.ACTIVATION: 6 * MiB + 512,
        Category.TEMPORARY: 1 * MiB,
        Category.OTHER: 1 * MiB,
    }
    assert profile.peak_phase is Phase.BACKWARD
    assert profile.source == "snapshot" and profile.device == "cuda:0"
    assert trace.phases.count(Phase.OPTIMIZER) > 0 and trace.phases.count(Phase.FORWARD) > 0


def test_modules_by_source_line_without_metadata(make_snapshot) -> None:
    profile, _ = snapshot_profile(make_snapshot())
    own = {m.fqn: m.self_activation_bytes for m in profile.modules}
    assert own == {
        "model.py:10 forward": 2 * MiB,
        "model.py:11 forward": 2 * MiB,
        "model.py:12 forward": 2 * MiB,
        "train.py:40 main": 512,  # the loss, computed outside the model
    }


def test_modules_by_name_with_memfit_metadata(make_snapshot) -> None:
    profile, _ = snapshot_profile(make_snapshot(metadata=True, layers=2))
    mods = {m.fqn: m for m in profile.modules}
    assert mods["layers.0"].self_activation_bytes == 2 * MiB
    assert mods["layers"].activation_bytes == 4 * MiB  # ancestors add up their children
    assert mods["layers.0"].module_type == "Linear"


def test_allocations_made_before_the_recording(make_snapshot) -> None:
    snapshot = make_snapshot()
    trace = snapshot["device_traces"][0]
    allocs = [i for i, e in enumerate(trace) if e["action"] == "alloc"]
    del trace[: allocs[3]]  # the weights were allocated before recording began
    profile, replayed = snapshot_profile(snapshot)
    assert profile.peak_allocated == 56 * MiB + 512
    assert any("before the recording" in w for w in profile.warnings)
    early = [a for a in replayed.allocations if a.before]
    assert sum(a.size for a in early) == 12 * MiB
    assert all(a.start == -1 for a in early)


def test_device_gives_the_verdict(make_snapshot) -> None:
    profile, _ = snapshot_profile(make_snapshot(), device=get_device("rtx4090"))
    assert profile.device == "rtx4090" and profile.fits()


def test_timeline_is_thinned_but_keeps_the_peak(make_snapshot) -> None:
    profile, trace = snapshot_profile(make_snapshot(steps=800))
    assert trace.num_events > 10_000
    assert len(profile.timeline) <= 3003
    assert max(e.allocated for e in profile.timeline) == profile.peak_allocated


def test_replay_of_an_oom_warns(make_snapshot) -> None:
    snapshot = make_snapshot()
    snapshot["device_traces"][0].append(
        {"action": "oom", "device_free": 0, "size": 3 * MiB, "stream": 0, "frames": []}
    )
    assert any("out-of-memory" in w for w in replay(snapshot).warnings)
