"""Hugging Face's causal mask on fake tensors follows the GPU's branch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from memfit.techniques import Checkpoint
from memfit.trace.estimate import trace_step

BATCH, SEQ = 2, 64


def hf_llama():  # its own: tests/apply/helpers.py casts to float64, which a fake build cannot
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=101,
        max_position_embeddings=SEQ,
    )
    return LlamaForCausalLM(config)


class MakesItsOwnMask(nn.Module):
    """A model that builds an all-ones padding mask when given none (OPT in transformers 5.17)."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = hf_llama()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> Any:
        ones = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.lm(input_ids=input_ids, labels=labels, attention_mask=ones)


def masks(batch: dict, builder: Callable[[], nn.Module] = hf_llama) -> list:
    """Allocations shaped like a materialised causal mask, tracing with use_cache off."""
    plan = [Checkpoint(modules=("model.layers.*.input_layernorm",))]  # sets use_cache=False
    if builder is not hf_llama:
        plan = [Checkpoint(modules=("lm.model.layers.*.input_layernorm",))]
    traced = trace_step(builder, batch, precision="bf16-mixed", plan=plan)
    shape = (BATCH, 1, SEQ, SEQ)
    return [a for a in traced.trace.allocations.values() if a.shape == shape]


def test_no_mask_is_built_without_padding():
    pytest.importorskip("transformers.masking_utils")
    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    assert masks({"input_ids": ids, "labels": ids}) == []


def test_a_padded_batch_keeps_its_mask():
    pytest.importorskip("transformers.masking_utils")
    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    padding = torch.ones(BATCH, SEQ, dtype=torch.long)
    padding[0, -5:] = 0
    assert masks({"input_ids": ids, "labels": ids, "attention_mask": padding})


def test_own_position_ids_keep_the_mask():
    pytest.importorskip("transformers.masking_utils")
    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    positions = torch.arange(SEQ).repeat(BATCH, 1)  # values a tracer cannot read
    assert masks({"input_ids": ids, "labels": ids, "position_ids": positions})


def test_a_mask_of_ones_the_model_makes_itself_is_skipped_as_on_the_gpu():
    # transformers calls a fake padding mask "tracing" and keeps the causal mask; on the GPU
    # the model's own mask of ones lets it use is_causal=True instead
    pytest.importorskip("transformers.masking_utils")
    ids = torch.zeros(BATCH, SEQ, dtype=torch.long)
    assert masks({"input_ids": ids, "labels": ids}, MakesItsOwnMask) == []
