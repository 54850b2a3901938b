"""LLaMA (Touvron et al. 2023): pre-RMSNorm decoder with rotary positions and a SwiGLU MLP.

Layout as in Meta's reference code and Hugging Face's ``LlamaForCausalLM``: no biases, no
dropout, separate q/k/v projections (grouped-query when ``n_kv_heads < n_heads``), rotary
embeddings on q and k, ``down(silu(gate(x)) * up(x))`` MLP, a final RMSNorm and an LM head, untied
unless ``tie_embeddings`` (Llama 3.2 ties it). The default config is a 1B-class model
(TinyLlama-like widths with 16 layers and 16 KV heads); ``LLAMA_3B`` is Llama-3.2-3B's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memfit.step.causal_lm_loss import CausalLMLoss
from memfit.zoo._checks import check_heads
from memfit.zoo.attention import SelfAttention, rotary_tables
from memfit.zoo.blocks import init_normal_
from memfit.zoo.output import ZooOutput, causal_lm_loss

__all__ = [
    "LlamaConfig",
    "Llama",
    "RMSNorm",
    "rms_norm_reference",
    "num_params",
    "LLAMA_3B",
    "LLAMA_8B",
    "LLAMA_70B",
]


@dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Sizes of a LLaMA model; the defaults are the zoo's ``llama-1b``."""

    vocab_size: int = 32000
    max_seq_len: int = 2048
    dim: int = 2048
    n_layers: int = 16
    n_heads: int = 16
    n_kv_heads: int = 16
    """Key/value heads; fewer than ``n_heads`` gives grouped-query attention."""
    hidden_dim: int = 5632
    """Inner width of the SwiGLU MLP."""
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    """The LM head multiplies by the embedding matrix (one parameter)."""

    def __post_init__(self) -> None:
        check_heads(self, self.dim, self.n_heads, self.n_kv_heads)


LLAMA_3B = LlamaConfig(
    vocab_size=128256,
    max_seq_len=4096,
    dim=3072,
    n_layers=28,
    n_heads=24,
    n_kv_heads=8,
    hidden_dim=8192,
    rope_theta=500000.0,
    tie_embeddings=True,
)
"""Llama-3.2-3B's shape (Meta's config.json; 4096 positions instead of its 131072 with scaling)."""

LLAMA_8B = LlamaConfig(
    vocab_size=128256,
    max_seq_len=8192,
    dim=4096,
    n_layers=32,
    n_heads=32,
    n_kv_heads=8,
    hidden_dim=14336,
    rope_theta=500000.0,
)
"""Llama-3.1-8B's shape (Meta's config.json: 8,030,261,248 parameters); 8192 positions instead
of its 131072 with rope scaling, which changes no size."""

LLAMA_70B = LlamaConfig(
    vocab_size=128256,
    max_seq_len=8192,
    dim=8192,
    n_layers=80,
    n_heads=64,
    n_kv_heads=8,
    hidden_dim=28672,
    rope_theta=500000.0,
)
"""Llama-3.1-70B's shape (Meta's config.json: 70,553,706,496 parameters), 8192 positions."""


def num_params(config: LlamaConfig) -> int:
    """Parameters (tied embedding and LM head counted once).

    Per layer (d = dim, h = hidden_dim, kv = n_kv_heads * head_dim): q and output ``2 * d * d``,
    k and v ``2 * d * kv``, MLP ``3 * d * h``, two RMSNorm weights ``2d``; plus embedding and LM
    head ``2 * V * d`` (``V * d`` when tied) and the final norm ``d``.
    """
    d, h = config.dim, config.hidden_dim
    kv = config.n_kv_heads * (d // config.n_heads)
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * h + 2 * d
    tables = 1 if config.tie_embeddings else 2
    return tables * config.vocab_size * d + config.n_layers * per_layer + d


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm (Zhang and Sennrich 2019): ``x / sqrt(mean(x**2) + eps) * weight``."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


_rms_norm = getattr(F, "rms_norm", None)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, through ``F.rms_norm`` (torch >= 2.4) when present."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _rms_norm is not None:
            return _rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return rms_norm_reference(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """Gated MLP ``down(silu(gate(x)) * up(x))`` (Shazeer 2020)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    """One decoder layer: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = SelfAttention(
            config.dim, config.n_heads, n_kv_heads=config.n_kv_heads, bias=False, causal=True
        )
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope=rope)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    """LLaMA language model.

    Args:
        config: sizes.
    """

    memfit_loss = CausalLMLoss()  # its loss, declared: the planner may chunk it

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        init_normal_(self, std=0.02)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> ZooOutput:
        """Logits of the next token at every position.

        Args:
            input_ids: int64 ``[B, S]`` with ``S <= max_seq_len``.
            labels: int64 ``[B, S]`` (usually ``input_ids``); shifted inside the loss.

        Returns:
            ``ZooOutput`` with logits ``[B, S, vocab_size]`` in the compute dtype and, when labels
            are given, the next-token cross-entropy of ``logits.float()``, since Hugging Face's
            LLaMA upcasts before its loss.
        """
        head_dim = self.config.dim // self.config.n_heads
        rope = rotary_tables(
            input_ids.shape[1], head_dim, theta=self.config.rope_theta, device=input_ids.device
        )
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x, rope)
        logits = self.lm_head(self.norm(x))
        loss = causal_lm_loss(logits.float(), labels) if labels is not None else None
        return ZooOutput(loss=loss, logits=logits)
