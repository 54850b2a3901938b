"""The CUDA branch of PyTorch's fused transformer inference ops ("fast path").

In ``eval()`` without autograd, ``nn.TransformerEncoderLayer`` calls
``torch._transformer_encoder_layer_fwd`` and ``nn.MultiheadAttention`` calls
``torch._native_multi_head_attention``: one ATen operator each, whose fake kernel only makes the
output. The CUDA kernels allocate the intermediate tensors of a whole layer inside them (the
packed QKV projection, attention, the feed-forward hidden layer: seven activations of the
layer's output size at the peak). These kernels call the same ATen operators the CUDA code calls,
in its order, so the recorder sees every allocation and free: ``transformer_encoder_layer_
forward`` in ``aten/src/ATen/native/transformers/transformer.cpp`` and ``native_multi_head_
attention_cuda`` in ``aten/src/ATen/native/transformers/cuda/attention.cu`` (which takes the
fused SDPA route only without a mask and when ``_fused_sdp_choice`` picks flash or the
memory-efficient kernel, else computes the B x H x T x T scores itself).

Known limitations:
    * Nested-tensor inputs (``enable_nested_tensor`` with a padding mask) are not modelled;
      they run the dense path here.
    * The masked softmax of the unfused path is modelled as one softmax output of the scores'
      size (the mask's own expansion is not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from memfit.devices import DeviceSpec
from memfit.trace.cuda.sdpa import SdpaBackend, SdpaCall, choose_backend
from memfit.trace.cuda.stack import CudaStack

__all__ = ["make_encoder_layer_fwd", "make_native_mha"]

aten = torch.ops.aten
_FUSED = (SdpaBackend.FLASH, SdpaBackend.EFFICIENT)


def make_native_mha(device: DeviceSpec, stack: CudaStack) -> Callable[..., Any]:
    """``_native_multi_head_attention`` as its CUDA kernel allocates."""

    def native_mha(
        keyset: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        embed_dim: int,
        num_head: int,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor,
        proj_weight: torch.Tensor,
        proj_bias: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = True,
        average_attn_weights: bool = True,
        mask_type: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, head_dim = query.shape[0], embed_dim // num_head
        if query is key and key is value and head_dim % 8 == 0 and not need_weights:
            heads = query.view(batch, -1, num_head, head_dim).transpose(1, 2)
            call = SdpaCall.of(heads, heads, heads, mask, 0.0, False, False)
            if mask is None and choose_backend(call, device, stack) in _FUSED:
                packed = F.linear(query, qkv_weight, qkv_bias)
                q, k, v = (
                    chunk.view(batch, -1, num_head, head_dim).transpose(1, 2)
                    for chunk in packed.chunk(3, -1)
                )
                attended = aten.scaled_dot_product_attention.default(q, k, v, None, 0.0, False)
                merged = attended.transpose(1, 2).reshape(batch, -1, embed_dim)
                # the packed projection and the attention output live until the kernel returns
                return F.linear(merged, proj_weight, proj_bias), query.new_empty(0)
        weights = (need_weights, average_attn_weights)
        return _unfused_mha(query, embed_dim, num_head, qkv_weight, proj_weight, proj_bias, weights)

    return native_mha


def _unfused_mha(
    query: torch.Tensor,
    embed_dim: int,
    num_head: int,
    qkv_weight: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    weights: tuple[bool, bool],
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, length, head_dim = query.shape[0], query.shape[1], embed_dim // num_head
    # qkv_projection (gemm_nt), then _transform_bias_rescale_qkv's packed [3, B, H, T, d]
    qkv = torch.matmul(query.reshape(batch * length, embed_dim), qkv_weight.t())
    q_k_v = qkv.new_empty((3, batch, num_head, length, head_dim))
    del qkv
    q, k = q_k_v[0], q_k_v[1]
    scores = torch.bmm(
        q.reshape(batch * num_head, length, head_dim),
        k.reshape(batch * num_head, length, head_dim).transpose(1, 2),
    ).view(batch, num_head, length, length)
    scores = torch.softmax(scores, -1)
    need_weights, average = weights
    # bmm_nn writes the attention context into q's storage: no allocation
    if not need_weights:
        del scores
    context = q.transpose(1, 2).contiguous().view(batch * length, embed_dim)  # transform_0213
    # q, k, v (views of the packed buffer) live until the kernel returns
    projected = F.linear(context, proj_weight, proj_bias).view(batch, length, embed_dim)
    del context
    if not need_weights:
        return projected, query.new_empty(0)
    if average:
        scores = scores.sum(1) / num_head
    return projected, scores


def make_encoder_layer_fwd(device: DeviceSpec, stack: CudaStack) -> Callable[..., Any]:
    """``_transformer_encoder_layer_fwd`` as its CUDA kernel allocates."""
    native_mha = make_native_mha(device, stack)

    def encoder_layer(
        keyset: Any,
        src: torch.Tensor,
        embed_dim: int,
        num_heads: int,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor,
        proj_weight: torch.Tensor,
        proj_bias: torch.Tensor,
        use_gelu: bool,
        norm_first: bool,
        eps: float,
        norm_weight_1: torch.Tensor,
        norm_bias_1: torch.Tensor,
        norm_weight_2: torch.Tensor,
        norm_bias_2: torch.Tensor,
        ffn_weight_1: torch.Tensor,
        ffn_bias_1: torch.Tensor,
        ffn_weight_2: torch.Tensor,
        ffn_bias_2: torch.Tensor,
        mask: torch.Tensor | None = None,
        mask_type: int | None = None,
    ) -> torch.Tensor:
        if src.numel() == 0:
            return src.clone()
        shape = (embed_dim,)
        x = src
        if norm_first:
            x = F.layer_norm(x, shape, norm_weight_1, norm_bias_1, eps)
        attention = (qkv_weight, qkv_bias, proj_weight, proj_bias, mask, False, True, mask_type)
        x = native_mha(keyset, x, x, x, embed_dim, num_heads, *attention)[0]
        x.add_(src)
        if not norm_first:
            x = F.layer_norm(x, shape, norm_weight_1, norm_bias_1, eps)
        residual = x
        if norm_first:
            x = F.layer_norm(x, shape, norm_weight_2, norm_bias_2, eps)
        x = _ffn(x, ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, use_gelu)
        x.add_(residual)
        del residual
        if not norm_first:
            x = F.layer_norm(x, shape, norm_weight_2, norm_bias_2, eps)
        return x

    return encoder_layer


def _ffn(
    x: torch.Tensor,
    weight_1: torch.Tensor,
    bias_1: torch.Tensor,
    weight_2: torch.Tensor,
    bias_2: torch.Tensor,
    use_gelu: bool,
) -> torch.Tensor:
    # linear_for_ffn: the first layer through cuBLASLt's fused bias + activation epilogue
    rows = x.shape[0] * x.shape[1]
    hidden = aten._addmm_activation.default(
        bias_1, x.reshape(rows, x.shape[2]), weight_1.t(), use_gelu=use_gelu
    )
    out = aten.addmm.default(bias_2, hidden, weight_2.t())
    del hidden
    return out.view(x.shape[0], x.shape[1], -1)
