"""Snapshot classification from allocation order on Hugging Face training loops, recorded on
the CPU (``cpu_recorder``): the classes the H200 comparison (bench/snapshot_order.py) got wrong.

On the H200, LLaMA (4 layers, hidden 512, sequence 512, foreach AdamW) came out with its untied
``lm_head`` as "other" (LLaMA builds its rotary ``inv_freq`` from temporaries before the head,
and weights were only the blocks made before the first free) and all AdamW state as "other":
a kept block of a weight's size (hidden x hidden there) counted as one more weight, whose
"gradient" became a foreach AdamW temporary made after the state, so the state fell in
backward. Expected figures come from the models' parameters, not from the trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from memfit.profile import Category, Phase
from memfit.snapshot.order import infer_from_order
from memfit.snapshot.profile import categorize
from memfit.snapshot.trace import replay, round_size
from tests.snapshot.cpu_recorder import StorageRecorder

pytestmark = pytest.mark.slow  # three training steps of two small Hugging Face models

transformers = pytest.importorskip("transformers")
VOCAB, HIDDEN = 4000, 64


def _llama() -> Any:
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN, intermediate_size=176, num_hidden_layers=4, num_attention_heads=8,
        vocab_size=VOCAB, attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _gpt2() -> Any:
    config = transformers.GPT2Config(
        n_layer=4, n_embd=HIDDEN, n_head=4, vocab_size=VOCAB, attn_implementation="sdpa",
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _adamw(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, foreach=True)


def _sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, foreach=True)


def _record(build: Callable[[], Any], optimizer: Callable[[Any], Any], kept_square: bool):
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 64))
    recorder = StorageRecorder()
    with recorder:
        # a block the size of a hidden x hidden weight, made first and kept (the H200 run's)
        square = torch.zeros(HIDDEN, HIDDEN) if kept_square else None
        model = build()
        opt = optimizer(model.parameters())
        for _ in range(3):
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    snapshot = recorder.snapshot()  # the dump: ``square`` is still alive
    del square
    return snapshot, model


@pytest.mark.parametrize(
    ("build", "optimizer", "moments", "kept_square"),
    [
        (_llama, _adamw, 2, True),
        (_llama, _adamw, 2, False),
        (_llama, _sgd, 1, True),
        (_gpt2, _adamw, 2, True),
    ],
    ids=["llama-adamw-square", "llama-adamw", "llama-sgd-square", "gpt2-adamw-square"],
)
def test_weights_and_state_are_found_by_class(build, optimizer, moments, kept_square) -> None:
    snapshot, model = _record(build, optimizer, kept_square)
    trace = infer_from_order(replay(snapshot))
    assert trace is not None
    runs = [trace.phases[0]] + [
        p for i, p in enumerate(trace.phases[1:], 1) if p is not trace.phases[i - 1]
    ]
    assert runs == [Phase.SETUP] + [Phase.FORWARD, Phase.BACKWARD, Phase.OPTIMIZER] * 3
    at_end: dict[Category, int] = {}
    for allocation, category in zip(trace.allocations, categorize(trace), strict=True):
        if allocation.end >= trace.num_events:
            at_end[category] = at_end.get(category, 0) + allocation.rounded
    params = list(model.parameters())
    weights = sum(round_size(p.numel() * p.element_size()) for p in params)
    steps = len(params) * 512 if moments == 2 else 0  # AdamW's step counters (CPU tensors here)
    assert at_end[Category.PARAM] == weights
    assert at_end[Category.OPTIMIZER] == moments * weights + steps
