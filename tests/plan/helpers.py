"""A tiny causal LM to plan for: four identical blocks, a 1000-word vocabulary.

At this size (batch 8, sequence 128) activations are large enough against the weights that
checkpointing, micro-batching and a chunked loss each change the predicted peak.
"""

from __future__ import annotations

import torch
from torch import nn

from memfit.zoo.gpt2 import GPT2, GPT2Config

CONFIG = dict(n_layers=4, dim=128, n_heads=4, vocab_size=1000, max_seq_len=128)
BATCH = "input_ids=int64[8,128]<1000 labels=int64[8,128]<1000"

BUILDER_FILE = f"""
from memfit.zoo.gpt2 import GPT2, GPT2Config

def build():
    return GPT2(GPT2Config(**{CONFIG!r}))
"""


def build() -> nn.Module:
    """The planned model (a builder: memfit builds it on fake tensors)."""
    torch.manual_seed(0)
    return GPT2(GPT2Config(**CONFIG))
