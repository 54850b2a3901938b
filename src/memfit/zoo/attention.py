"""Multi-head self-attention through ``scaled_dot_product_attention``, and rotary embeddings.

Every zoo transformer calls ``torch.nn.functional.scaled_dot_product_attention`` (SDPA) and
nothing else for the attention itself, because the memory an attention layer needs depends on the
SDPA kernel (flash, memory-efficient, cuDNN or math) that the GPU picks for these arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfAttention", "rotary_tables", "apply_rotary"]


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention with an output projection.

    Args:
        dim: model width.
        n_heads: query heads; ``dim`` must be a multiple of it.
        n_kv_heads: key/value heads (grouped-query attention, Ainslie et al. 2023);
            None means ``n_heads``. ``n_heads`` must be a multiple of it.
        bias: whether the projections carry biases.
        causal: mask future positions (``is_causal=True``).
        dropout: attention-probability dropout, passed to SDPA as ``dropout_p`` in training.
        fused_qkv: one ``dim -> (n_heads + 2 * n_kv_heads) * head_dim`` projection (GPT-2's
            ``c_attn``, torchvision's ``in_proj``) instead of three (BERT, LLaMA). Parameter counts
            are equal; activations differ when q and k are rotated (the fused output stays alive
            as long as v, a view of it, is saved).

    Known limitations:
        Grouped-query attention passes ``enable_gqa=True`` to SDPA rather than repeating k and v;
        on CUDA that rules out the memory-efficient kernel.
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        *,
        n_kv_heads: int | None = None,
        bias: bool = True,
        causal: bool = False,
        dropout: float = 0.0,
        fused_qkv: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.head_dim = dim // n_heads
        self.causal = causal
        self.dropout = dropout
        q_dim = n_heads * self.head_dim
        kv_dim = self.n_kv_heads * self.head_dim
        self._split = (q_dim, kv_dim, kv_dim)
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv_proj = nn.Linear(dim, q_dim + 2 * kv_dim, bias=bias)
        else:
            self.q_proj = nn.Linear(dim, q_dim, bias=bias)
            self.k_proj = nn.Linear(dim, kv_dim, bias=bias)
            self.v_proj = nn.Linear(dim, kv_dim, bias=bias)
        self.out_proj = nn.Linear(q_dim, dim, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend over the sequence.

        Args:
            x: ``[B, S, dim]``.
            mask: boolean ``[B, 1, 1, S]`` (True = attend) or additive float mask, or None.
            rope: ``(cos, sin)`` tables of shape ``[S, head_dim]`` from ``rotary_tables``.

        Returns:
            ``[B, S, dim]``.
        """
        batch, seq, _ = x.shape
        if self.fused_qkv:
            q, k, v = self.qkv_proj(x).split(self._split, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        # [B, S, H * D] -> [B, H, S, D]
        q = q.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )
        y = y.transpose(1, 2).reshape(batch, seq, self.n_heads * self.head_dim)
        return self.out_proj(y)


def rotary_tables(
    seq_len: int, head_dim: int, *, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of rotary position embeddings (Su et al. 2021, RoFormer).

    Angle of position ``m`` and frequency ``i``: ``m * theta ** (-2i / head_dim)``, for
    ``i < head_dim / 2``; each angle is used for dimensions ``i`` and ``i + head_dim / 2``
    (the "rotate half" layout of GPT-NeoX and Hugging Face's LLaMA).

    Args:
        seq_len: positions ``0 .. seq_len - 1``.
        head_dim: per-head width (even).
        theta: base of the frequencies (10000 in RoFormer and LLaMA).
        device: where to build the tables.

    Returns:
        ``(cos, sin)``, each float32 ``[seq_len, head_dim]``. They are built on each forward
        instead of kept as buffers, so a model built on the meta device needs no re-init.
    """
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (``[B, H, S, D]``) by the position angles; tables are cast to ``x.dtype``."""
    half = x.shape[-1] // 2
    rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)
