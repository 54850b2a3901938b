"""BERT-base (Devlin et al. 2019) with its masked-LM head, as Hugging Face's ``BertForMaskedLM``.

Embeddings (word + position + token type, LayerNorm, dropout), post-LN encoder layers
(``LN(x + drop(attn(x)))``, ``LN(x + drop(mlp(x)))``), and the MLM head: dense, GELU, LayerNorm,
then a decoder that shares the word-embedding matrix and has its own bias. No pooler (the MLM
model has none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from memfit.zoo._checks import check_heads
from memfit.zoo.attention import SelfAttention
from memfit.zoo.blocks import MLP, dropout, init_normal_
from memfit.zoo.output import ZooOutput, token_loss

__all__ = ["BertConfig", "Bert", "num_params"]


@dataclass(frozen=True, kw_only=True)
class BertConfig:
    """Sizes of a BERT encoder; the defaults are BERT-base (uncased vocabulary)."""

    vocab_size: int = 30522
    max_seq_len: int = 512
    """Learned positions (``max_position_embeddings``)."""
    type_vocab_size: int = 2
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.1
    """On the embeddings and both residual branches (``hidden_dropout_prob``)."""
    attn_dropout: float = 0.1
    """On the attention probabilities (``attention_probs_dropout_prob``, SDPA ``dropout_p``)."""
    norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        check_heads(self, self.dim, self.n_heads)


def num_params(config: BertConfig) -> int:
    """Parameters, with the tied decoder weight counted once.

    Embeddings ``(V + P + types) * d + 2d``; per layer q, k, v, output ``4 * (d * d + d)``, MLP
    ``2 * d * m + m + d``, two LayerNorms ``4d``; MLM head dense ``d * d + d``, LayerNorm ``2d``,
    decoder bias ``V``.
    """
    d, m, v = config.dim, config.mlp_dim, config.vocab_size
    embeddings = (v + config.max_seq_len + config.type_vocab_size) * d + 2 * d
    per_layer = 4 * (d * d + d) + (2 * d * m + m + d) + 4 * d
    head = (d * d + d) + 2 * d + v
    return embeddings + config.n_layers * per_layer + head


class PostNormBlock(nn.Module):
    """BERT encoder layer: ``x = LN(x + drop(attn(x)))``, then ``LN(x + drop(mlp(x)))``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config.dim, config.n_heads, dropout=config.attn_dropout)
        self.attn_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = MLP(config.dim, config.mlp_dim)
        self.mlp_norm = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.drop = dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attn_norm(x + self.drop(self.attn(x, mask=mask)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))


class Bert(nn.Module):
    """BERT with a masked-LM head.

    Args:
        config: sizes.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.word_embed = nn.Embedding(config.vocab_size, d)
        self.pos_embed = nn.Embedding(config.max_seq_len, d)
        self.type_embed = nn.Embedding(config.type_vocab_size, d)
        self.embed_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.drop = dropout(config.dropout)
        self.layers = nn.ModuleList(PostNormBlock(config) for _ in range(config.n_layers))
        self.head_dense = nn.Linear(d, d)
        self.head_act = nn.GELU()
        self.head_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.decoder = nn.Linear(d, config.vocab_size, bias=True)
        init_normal_(self, std=0.02)
        self.decoder.weight = self.word_embed.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ZooOutput:
        """Token logits at every position (all sequences are token type 0).

        Args:
            input_ids: int64 ``[B, S]`` with ``S <= max_seq_len``.
            labels: int64 ``[B, S]``; positions set to -100 are left out of the loss.
            attention_mask: ``[B, S]``, 1 (or True) for tokens to attend to, 0 for padding.
                Passed to SDPA as a boolean ``[B, 1, 1, S]`` mask, which on CUDA rules out the
                flash kernel.

        Returns:
            ``ZooOutput`` with logits ``[B, S, vocab_size]`` and, with labels, the cross-entropy
            over every labelled position, in the logits' dtype.
        """
        seq = input_ids.shape[1]
        positions = torch.arange(seq, device=input_ids.device)
        token_types = torch.zeros_like(input_ids)
        x = self.word_embed(input_ids) + self.pos_embed(positions) + self.type_embed(token_types)
        x = self.drop(self.embed_norm(x))
        mask = None
        if attention_mask is not None:
            mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        x = self.head_norm(self.head_act(self.head_dense(x)))
        logits = self.decoder(x)
        loss = token_loss(logits, labels) if labels is not None else None
        return ZooOutput(loss=loss, logits=logits)
