"""Hugging Face's causal mask on fake tensors follows the GPU's branch."""

from __future__ import annotations

import pytest
import torch

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


def masks(batch: dict) -> list:
    """Allocations shaped like a materialised causal mask, tracing with use_cache off."""
    plan = [Checkpoint(modules=("model.layers.*.input_layernorm",))]  # sets use_cache=False
    traced = trace_step(hf_llama, batch, precision="bf16-mixed", plan=plan)
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
