"""GPT-2 (Radford et al. 2019): a decoder-only, pre-LN transformer with a tied LM head.

Layout as in OpenAI's release and Hugging Face's ``GPT2LMHeadModel``: token + learned position
embeddings, dropout, pre-LN layers (fused qkv projection, causal SDPA, GELU-tanh MLP), a final
LayerNorm, and an LM head that shares the token-embedding matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memfit.step.causal_lm_loss import CausalLMLoss
from memfit.zoo._checks import check_heads
from memfit.zoo.blocks import PreNormBlock, dropout, init_normal_
from memfit.zoo.output import ZooOutput, causal_lm_loss

__all__ = ["GPT2Config", "GPT2", "GPT2_SMALL", "GPT2_MEDIUM", "num_params"]


@dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """Sizes of a GPT-2 model; the defaults are GPT-2 small (124M)."""

    vocab_size: int = 50257
    """BPE vocabulary (not padded to a multiple of 64, unlike nanoGPT)."""
    max_seq_len: int = 1024
    """Learned positions (``n_positions``)."""
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_ratio: int = 4
    """MLP inner width is ``mlp_ratio * dim``."""
    dropout: float = 0.1
    """On the embeddings and on both residual branches."""
    attn_dropout: float = 0.1
    """On the attention probabilities (SDPA ``dropout_p``)."""
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_heads(self, self.dim, self.n_heads)


GPT2_SMALL = GPT2Config()
GPT2_MEDIUM = GPT2Config(dim=1024, n_layers=24, n_heads=16)


def num_params(config: GPT2Config) -> int:
    """Parameters, with the tied LM head counted once.

    Per layer (d = dim): two LayerNorms ``2 * 2d``, qkv ``d * 3d + 3d``, attention output
    ``d * d + d``, MLP ``d * 4d + 4d`` and ``4d * d + d``; plus embeddings ``(V + P) * d`` and the
    final LayerNorm ``2d``.
    """
    d, hidden = config.dim, config.mlp_ratio * config.dim
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)
    embeddings = (config.vocab_size + config.max_seq_len) * d
    return embeddings + config.n_layers * per_layer + 2 * d


class GPT2(nn.Module):
    """GPT-2 language model.

    Args:
        config: sizes; ``GPT2_SMALL`` or ``GPT2_MEDIUM`` for the released shapes.
    """

    memfit_loss = CausalLMLoss()  # its loss, declared: the planner may chunk it

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.wpe = nn.Embedding(config.max_seq_len, config.dim)
        self.drop = dropout(config.dropout)
        self.layers = nn.ModuleList(
            PreNormBlock(
                config.dim,
                config.n_heads,
                config.mlp_ratio * config.dim,
                causal=True,
                dropout_p=config.dropout,
                attn_dropout=config.attn_dropout,
                norm_eps=config.norm_eps,
                gelu_approximate="tanh",
            )
            for _ in range(config.n_layers)
        )
        self.ln_f = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        init_normal_(self, std=0.02)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ZooOutput:
        """Logits of the next token at every position.

        Args:
            input_ids: int64 ``[B, S]`` with ``S <= max_seq_len``.
            labels: int64 ``[B, S]`` (usually ``input_ids``); shifted inside the loss.

        Returns:
            ``ZooOutput`` with logits ``[B, S, vocab_size]`` in the compute dtype and, when labels
            are given, the next-token cross-entropy taken in that same dtype.
        """
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.wte(input_ids) + self.wpe(positions))
        for layer in self.layers:
            x = layer(x)
        logits = self.lm_head(self.ln_f(x))
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ZooOutput(loss=loss, logits=logits)
