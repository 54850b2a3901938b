"""Tiny models for tests, with byte counts that can be worked out by hand."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn


def tiny_mlp() -> nn.Sequential:
    """32 -> 128 -> ReLU -> 16, no biases: W1 is 128x32, W2 is 16x128."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 128, bias=False), nn.ReLU(), nn.Linear(128, 16, bias=False))


def tiny_gpt2(*, dropout: float = 0.1) -> nn.Module:
    """GPT-2 with 2 layers of width 64, a 100-word vocabulary; GPT-2's dropout unless told."""
    from memfit.zoo.gpt2 import GPT2, GPT2Config

    config = GPT2Config(n_layers=2, dim=64, n_heads=4, vocab_size=100, max_seq_len=32)
    return GPT2(replace(config, dropout=dropout, attn_dropout=dropout))


TINY_GPT2_INPUT = "input_ids=int64[2,32]<100 labels=int64[2,32]<100"
