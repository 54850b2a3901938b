"""Module tracking keeps no recomputed graph alive (see memfit/trace/modules.py)."""

from __future__ import annotations

from memfit.profile import Category, Phase
from memfit.techniques import Checkpoint, MicroBatch
from memfit.trace.estimate import trace_step
from tests.models import TINY_GPT2_INPUT, tiny_gpt2


def live_backward_temporaries(traced):
    live: set[int] = set()
    for event in traced.trace.events[: traced.marks["zero_grad"]]:
        if event > 0:
            live.add(event)
        else:
            live.discard(-event)
    return [
        traced.trace.allocations[k]
        for k in live
        if traced.trace.allocations[k].phase is Phase.BACKWARD
        and traced.trace.allocations[k].category is Category.TEMPORARY
    ]


def test_recomputed_activations_die_after_backward():
    plan = [Checkpoint(modules=("layers.*",)), MicroBatch(n=2)]
    traced = trace_step(tiny_gpt2, TINY_GPT2_INPUT, plan=plan, precision="bf16-mixed")
    assert live_backward_temporaries(traced) == []
