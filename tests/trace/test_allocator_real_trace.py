"""The allocator simulation replays a real CUDA trace to the byte.

Fixture: a memory snapshot of Hugging Face GPT-2 (bs8, seq1024, bf16-mixed, fused AdamW) with
Hugging Face full checkpointing, four steps from an empty allocator, taken on an H200 with torch
2.11 (bench/diag_snapshot.py). Its 7 496 allocations and frees, replayed in order through
``CachingAllocatorSim``, must reserve exactly what PyTorch's allocator reserved in that run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from memfit.report import analyze_fragmentation, load_snapshot, snapshot_profile

SNAPSHOT = Path(__file__).parent / "fixtures" / "hf_gpt2_ckpt_snapshot_h200.pickle"


@pytest.mark.slow
def test_simulated_reserved_equals_the_real_peak() -> None:
    profile, trace = snapshot_profile(load_snapshot(SNAPSHOT), name=SNAPSHOT.name)
    fragmentation = analyze_fragmentation(trace, candidates=())
    assert len(trace.allocations) > 7000
    assert trace.peak_reserved == profile.peak_reserved > profile.peak_allocated
    assert fragmentation.simulated_reserved == trace.peak_reserved
