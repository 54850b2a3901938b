"""Building blocks shared by the zoo's LayerNorm transformers (GPT-2, ViT, BERT)."""

from __future__ import annotations

import torch
from torch import nn

from memfit.zoo.attention import SelfAttention

__all__ = ["MLP", "PreNormBlock", "dropout", "init_normal_"]


def dropout(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity`` when ``p == 0`` so that no mask is ever made."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


class MLP(nn.Module):
    """Position-wise feed-forward: ``fc2(act(fc1(x)))`` (Vaswani et al. 2017, section 3.3).

    Args:
        dim: model width.
        hidden_dim: inner width (4 * dim in GPT-2, BERT and ViT).
        gelu_approximate: ``"tanh"`` for GPT-2's GELU, ``"none"`` for the exact erf form.
    """

    def __init__(self, dim: int, hidden_dim: int, *, gelu_approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=gelu_approximate)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PreNormBlock(nn.Module):
    """Pre-LN transformer layer (GPT-2, ViT): ``x + drop(attn(ln(x)))``, ``x + drop(mlp(ln(x)))``.

    Args:
        dim: model width.
        n_heads: attention heads.
        mlp_dim: inner width of the MLP.
        causal: causal self-attention (GPT-2) or bidirectional (ViT).
        dropout_p: residual dropout after the attention and after the MLP.
        attn_dropout: dropout on the attention probabilities (SDPA ``dropout_p``).
        norm_eps: LayerNorm epsilon.
        gelu_approximate: GELU form of the MLP.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        mlp_dim: int,
        *,
        causal: bool,
        dropout_p: float,
        attn_dropout: float,
        norm_eps: float,
        gelu_approximate: str,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(
            dim, n_heads, causal=causal, dropout=attn_dropout, fused_qkv=True, bias=True
        )
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_dim, gelu_approximate=gelu_approximate)
        self.drop = dropout(dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x)))
        return x + self.drop(self.mlp(self.ln_2(x)))


def init_normal_(module: nn.Module, std: float) -> None:
    """Initialise like GPT-2, BERT and LLaMA: weights of linears and embeddings ~ N(0, std),
    biases zero, norms left at one/zero. Works on meta and fake tensors (it only launches
    in-place random ops).

    Args:
        module: the model; every submodule is visited.
        std: standard deviation (``initializer_range`` = 0.02 in all three).
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear | nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
        if isinstance(sub, nn.Linear) and sub.bias is not None:
            nn.init.zeros_(sub.bias)
