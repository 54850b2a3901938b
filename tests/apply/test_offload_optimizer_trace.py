"""What the traced host optimizer holds on the GPU, against what ``HostUpdates._on_grad`` does.

The real step (``_on_grad``) frees each gradient with its copy queued on the copy stream and
keeps at most ``_GRADS_IN_FLIGHT`` such copies queued; it widens the gradient to float32 on
that copy stream and brings each update's float32 weights back through a buffer made on the
other side stream; the caching allocator keeps one pool per stream. The trace must hold the
same: no gradient past backward, never more in flight than the code's bound, the float32
buffers in two side pools, never in the compute stream's.
"""

from __future__ import annotations

from torch import nn

import memfit.step.host_updates as host_updates
from memfit.profile import Phase
from memfit.techniques import OffloadOptimizer
from memfit.trace.estimate import trace_step
from tests.helpers import VOCAB


def _llama() -> nn.Module:
    from memfit.zoo.llama import Llama, LlamaConfig

    config = LlamaConfig(
        n_layers=3, dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=VOCAB,
        max_seq_len=16,
    )  # fmt: skip
    return Llama(config).train()


def _traced():
    batch = f"input_ids=int64[2,12]<{VOCAB} labels=int64[2,12]<{VOCAB}"
    return trace_step(_llama, batch, plan=[OffloadOptimizer()], precision="bf16-mixed")


def test_gradients_are_freed_by_the_end_of_backward_and_bounded_in_flight() -> None:
    step = _traced()
    weights = {tuple(m.weight.shape) for m in _llama().modules() if isinstance(m, nn.Linear)}
    offloaded = len([m for m in _llama().modules() if isinstance(m, nn.Linear)])
    assert offloaded > host_updates._GRADS_IN_FLIGHT  # the bound is reached
    trace, end = step.trace, step.marks["optimizer0"]
    grads = {
        key
        for key, a in trace.allocations.items()
        if a.phase == Phase.BACKWARD and a.dtype == "bfloat16" and a.shape in weights
    }
    live, most = set(), 0
    for event in trace.events[:end]:
        if event > 0 and event in grads:
            live.add(event)
            most = max(most, len(live))
        elif -event in live:
            live.discard(-event)
    assert not live  # all freed before the optimizer step
    assert most <= host_updates._GRADS_IN_FLIGHT + 1  # the bound, and the one being made
    assert most >= host_updates._GRADS_IN_FLIGHT


def test_float32_copies_live_in_the_side_streams_pools() -> None:
    trace = _traced().trace.allocations.values()
    numels = {m.weight.numel() for m in _llama().modules() if isinstance(m, nn.Linear)}
    flat = [a for a in trace if a.dtype == "float32" and len(a.shape) == 1 and a.shape[0] in numels]
    assert {a.stream for a in flat} == {1, 2}  # widened gradients; buffers of weights coming back
    assert max(a.size for a in flat) == 4 * max(numels)
    assert all(a.stream == 0 for a in trace if a not in flat)
