"""Fragmentation of a recorded run: floor <= ideal <= what any allocator reserves."""

from __future__ import annotations

import pytest

from memfit.report.text import fragmentation_text
from memfit.snapshot.fragmentation import analyze
from memfit.snapshot.trace import replay

MiB = 2**20


def test_floor_ideal_and_reserved(make_snapshot) -> None:
    frag = analyze(replay(make_snapshot()))
    assert frag.live_peak == 56 * MiB + 512
    assert frag.ideal == frag.live_peak  # a stack-like loop packs perfectly
    assert frag.reserved_peak == 60 * MiB
    assert frag.packing_waste == 60 * MiB - frag.ideal
    assert "ideal packing" in fragmentation_text(frag)


def _growing_snapshot() -> dict:
    """Allocate and free ever larger blocks: each needs a new segment unless segments expand."""
    trace, addr = [], 0x7F0000000000
    for k, size_mib in enumerate((12, 14, 16, 18, 20, 22)):
        size = size_mib * MiB
        trace.append(
            {"action": "segment_alloc", "addr": addr + k * 2**30, "size": size, "stream": 0}
        )
        trace.append({"action": "alloc", "addr": addr + k * 2**30, "size": size, "stream": 0})
        trace.append(
            {"action": "free_completed", "addr": addr + k * 2**30, "size": size, "stream": 0}
        )
    total = sum((12, 14, 16, 18, 20, 22)) * MiB
    segment = {"device": 0, "address": addr, "total_size": total, "stream": 0, "blocks": []}
    return {
        "segments": [segment],
        "device_traces": [trace],
        "allocator_settings": {"expandable_segments": False},
    }


def test_recommends_expandable_segments_when_blocks_keep_growing() -> None:
    pytest.importorskip("memfit.trace.allocator")
    frag = analyze(replay(_growing_snapshot()))
    assert frag.live_peak == frag.ideal == 22 * MiB
    assert frag.reserved_peak == 102 * MiB
    assert frag.best is not None and frag.best.setting == "expandable_segments:True"
    assert frag.best.saving > 50 * MiB
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in frag.advice()


def test_settings_already_in_use_are_not_suggested() -> None:
    pytest.importorskip("memfit.trace.allocator")
    snapshot = _growing_snapshot()
    snapshot["allocator_settings"]["expandable_segments"] = True
    frag = analyze(replay(snapshot))
    assert all(p.setting != "expandable_segments:True" for p in frag.predictions)
    assert frag.recorded_settings == "expandable_segments:True"
