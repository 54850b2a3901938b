"""CUDA autocast's cast policy per operator, as PyTorch's AutocastCUDA kernels apply it.

Source: ``aten/src/ATen/autocast_mode.cpp`` (``TORCH_LIBRARY_IMPL(aten, AutocastCUDA, m)``) and
``aten/src/ATen/autocast_mode.h`` (``AT_FORALL_LOWER_PRECISION_FP``, ``AT_FORALL_FP32``,
``AT_FORALL_FP32_SET_OPT_DTYPE``, ``AT_FORALL_PROMOTE``). The dispatcher of any torch build (CPU
builds included) lists which operators have an AutocastCUDA kernel; only the policy of each is
written here. ``tests/trace/test_cuda_autocast.py`` checks this table against the real CUDA
autocast on fake CUDA tensors wherever the installed torch is a CUDA build.
"""

from __future__ import annotations

from enum import Enum

import torch

__all__ = ["CastPolicy", "CUDA_AUTOCAST_POLICY", "registered_cuda_autocast_ops"]


class CastPolicy(str, Enum):
    LOWER_PRECISION = "lower_precision_fp"  # cast floating inputs to the autocast dtype
    FP32 = "fp32"  # cast floating inputs to float32
    FP32_SET_OPT_DTYPE = "fp32_set_opt_dtype"  # run with dtype=float32 when inputs are eligible
    FP32_APPEND_DTYPE = "fp32_append_dtype"  # redispatch to the overload that takes a dtype
    PROMOTE = "promote"  # cast all floating inputs to the widest floating type among them
    BANNED = "banned"  # raises under autocast (unsafe to autocast)


_LOWER = """
_convolution _convolution.deprecated conv1d conv2d conv3d conv_tbc conv_transpose1d
conv_transpose2d.input conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum mm
mv linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell
_thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell
_scaled_dot_product_flash_attention scaled_dot_product_attention cudnn_convolution
cudnn_convolution_transpose _cudnn_rnn
"""
_FP32 = """
acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan pow.Tensor_Scalar
pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm group_norm frobenius_norm.dim
nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss cosine_embedding_loss nll_loss
nll_loss2d hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss mse_loss
margin_ranking_loss multilabel_margin_loss soft_margin_loss triplet_margin_loss multi_margin_loss
binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp upsample_nearest1d
_upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d
_upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa
upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa rms_norm
"""
_FP32_SET_OPT_DTYPE = """
prod prod.dim_int prod.dim_Dimname softmax.int softmax.Dimname log_softmax.int
log_softmax.Dimname cumprod cumprod.dimname cumsum cumsum.dimname linalg_vector_norm
linalg_matrix_norm linalg_matrix_norm.str_ord sum sum.dim_IntList sum.dim_DimnameList
"""
_FP32_APPEND_DTYPE = "norm.Scalar norm.ScalarOpt_dim norm.names_ScalarOpt_dim"
_PROMOTE = """
addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put scatter_add tensordot
"""
_BANNED = "binary_cross_entropy"


def _table() -> dict[str, CastPolicy]:
    table: dict[str, CastPolicy] = {}
    for names, policy in (
        (_LOWER, CastPolicy.LOWER_PRECISION),
        (_FP32, CastPolicy.FP32),
        (_FP32_SET_OPT_DTYPE, CastPolicy.FP32_SET_OPT_DTYPE),
        (_FP32_APPEND_DTYPE, CastPolicy.FP32_APPEND_DTYPE),
        (_PROMOTE, CastPolicy.PROMOTE),
        (_BANNED, CastPolicy.BANNED),
    ):
        for name in names.split():
            table[name] = policy
    return table


CUDA_AUTOCAST_POLICY: dict[str, CastPolicy] = _table()


def registered_cuda_autocast_ops() -> set[str]:
    """Operator names (``name`` or ``name.overload``) with an AutocastCUDA kernel in this torch."""
    names = torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA")
    return {name.removeprefix("aten::") for name in names if name.startswith("aten::")}
