"""Vision Transformer ViT-B/16 (Dosovitskiy et al. 2021), laid out as torchvision's ``vit_b_16``.

A 16x16 stride-16 convolution cuts the image into patch tokens, a learned class token is
prepended, learned position embeddings are added, pre-LN encoder layers follow, then a final
LayerNorm; the class token's output goes through a linear head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from memfit.errors import InvalidInputError
from memfit.zoo._checks import check_heads
from memfit.zoo.blocks import PreNormBlock, dropout
from memfit.zoo.output import ZooOutput

__all__ = ["ViTConfig", "ViT", "num_params"]


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """Sizes of a ViT classifier; the defaults are ViT-B/16 at 224x224."""

    image_size: int = 224
    patch_size: int = 16
    channels: int = 3
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0
    """On the embeddings and both residual branches (torchvision's ``dropout``)."""
    attn_dropout: float = 0.0
    norm_eps: float = 1e-6
    num_classes: int = 1000

    def __post_init__(self) -> None:
        check_heads(self, self.dim, self.n_heads)
        if self.image_size % self.patch_size:
            raise InvalidInputError(
                f"ViTConfig: image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size}; pick an image size that is a multiple of it"
            )

    @property
    def num_tokens(self) -> int:
        """Patches plus the class token (197 for ViT-B/16 at 224)."""
        return (self.image_size // self.patch_size) ** 2 + 1


def num_params(config: ViTConfig) -> int:
    """Parameters: patch conv ``C * p * p * d + d``, class token ``d``, positions ``T * d``,
    per layer two LayerNorms ``4d``, qkv ``3d * d + 3d``, output ``d * d + d``, MLP
    ``2 * d * m + m + d``; final LayerNorm ``2d``; head ``d * classes + classes``.
    """
    d, m, p = config.dim, config.mlp_dim, config.patch_size
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * m + m + d)
    embed = config.channels * p * p * d + d + d + config.num_tokens * d
    head = d * config.num_classes + config.num_classes
    return embed + config.n_layers * per_layer + 2 * d + head


class ViT(nn.Module):
    """Vision Transformer classifier.

    Args:
        config: sizes.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.dim, config.patch_size
        self.patch_embed = nn.Conv2d(config.channels, d, kernel_size=p, stride=p)
        self.class_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.empty(1, config.num_tokens, d))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.drop = dropout(config.dropout)
        self.layers = nn.ModuleList(
            PreNormBlock(
                d,
                config.n_heads,
                config.mlp_dim,
                causal=False,
                dropout_p=config.dropout,
                attn_dropout=config.attn_dropout,
                norm_eps=config.norm_eps,
                gelu_approximate="none",
            )
            for _ in range(config.n_layers)
        )
        self.ln = nn.LayerNorm(d, eps=config.norm_eps)
        self.head = nn.Linear(d, config.num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ZooOutput:
        """Class logits.

        Args:
            pixel_values: float ``[B, C, image_size, image_size]``.
            labels: int64 ``[B]`` class indices.

        Returns:
            ``ZooOutput`` with logits ``[B, num_classes]`` and, with labels, their cross-entropy.
        """
        x = self.patch_embed(pixel_values)  # [B, d, H/p, W/p]
        x = x.flatten(2).transpose(1, 2)  # [B, N, d]
        cls = self.class_token.expand(x.shape[0], -1, -1)
        x = self.drop(torch.cat((cls, x), dim=1) + self.pos_embed)
        for layer in self.layers:
            x = layer(x)
        logits = self.head(self.ln(x)[:, 0])
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ZooOutput(loss=loss, logits=logits)
