"""Which scaled-dot-product-attention kernel a CUDA GPU runs, and what it keeps for backward.

The math kernel (what a CPU trace of GPT-2 falls back to) materialises the B x H x L x L scores;
flash, memory-efficient and cuDNN kernels keep only the output and a log-sum-exp. The choice
follows ``select_sdp_backend`` in PyTorch's ``aten/src/ATen/native/transformers/cuda/
sdp_utils.cpp``: try backends in priority order, each gated by filters on dtype, head dimension,
mask, dropout and the chip's SM version.

Known limitations:
    * Nested (jagged) tensors are not modelled; they take the math path here.
    * ROCm kernels (AOTriton, CK) are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from memfit.devices import DeviceSpec
from memfit.trace.cuda.stack import CudaStack

__all__ = ["SdpaBackend", "SdpaCall", "choose_backend", "enabled_backends"]


class SdpaBackend(str, Enum):
    CUDNN = "cudnn"
    FLASH = "flash"
    EFFICIENT = "efficient"
    MATH = "math"


_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True, slots=True)
class SdpaCall:
    """The properties of one SDPA call that decide the kernel."""

    q_shape: tuple[int, ...]
    k_shape: tuple[int, ...]
    v_shape: tuple[int, ...]
    dtype: torch.dtype
    last_dim_strides: tuple[int, int, int]
    storage_offset_bytes: tuple[int, int, int]
    has_mask: bool
    mask_last_stride: int
    dropout_p: float
    is_causal: bool
    requires_grad: bool
    enable_gqa: bool

    @classmethod
    def of(
        cls,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None,
        dropout_p: float,
        is_causal: bool,
        enable_gqa: bool,
    ) -> SdpaCall:
        tensors = (query, key, value)
        return cls(
            q_shape=tuple(query.shape),
            k_shape=tuple(key.shape),
            v_shape=tuple(value.shape),
            dtype=query.dtype,
            last_dim_strides=tuple(t.stride(-1) for t in tensors),  # type: ignore[arg-type]
            storage_offset_bytes=tuple(  # type: ignore[arg-type]
                t.storage_offset() * t.element_size() for t in tensors
            ),
            has_mask=attn_mask is not None,
            mask_last_stride=attn_mask.stride(-1) if attn_mask is not None else 1,
            dropout_p=float(dropout_p),
            is_causal=bool(is_causal),
            requires_grad=torch.is_grad_enabled() and any(t.requires_grad for t in tensors),
            enable_gqa=bool(enable_gqa),
        )


def _dense_ok(call: SdpaCall, *, ignore_singleton_last_dim: bool, supports_gqa: bool) -> bool:
    # check_batch_size_and_num_heads_dense<supports_gqa>: fewer key/value heads than query
    # heads (grouped-query attention) only where the kernel supports it: flash and cuDNN do,
    # the memory-efficient kernel does not (its GQA calls go to the math kernel)
    if len(call.q_shape) != 4 or len(call.k_shape) != 4 or len(call.v_shape) != 4:
        return False
    if min(call.q_shape[2], call.k_shape[2]) == 0:
        return False
    if call.q_shape[0] != call.k_shape[0] or call.k_shape[0] != call.v_shape[0]:
        return False
    q_heads, k_heads, v_heads = call.q_shape[1], call.k_shape[1], call.v_shape[1]
    grouped = call.enable_gqa and supports_gqa
    if k_heads != v_heads or (q_heads != k_heads and (not grouped or q_heads % k_heads)):
        return False
    singleton = (call.q_shape[-1], call.k_shape[-1], call.v_shape[-1])
    for stride, size in zip(call.last_dim_strides, singleton, strict=True):
        if stride != 1 and not (ignore_singleton_last_dim and size == 1):
            return False
    return call.mask_last_stride == 1 or not call.has_mask


def _cudnn_ok(call: SdpaCall, device: DeviceSpec, stack: CudaStack) -> bool:
    d_qk, d_v = call.q_shape[-1], call.v_shape[-1]
    sm90_or_100 = device.sm == (9, 0) or device.sm[0] == 10
    head_limit = stack.cudnn_sdpa_max_head_dim if sm90_or_100 else 128
    if sm90_or_100 and call.requires_grad and head_limit > 128:
        if not ((d_qk <= 128 and d_v <= 128) or (d_qk, d_v) in ((192, 128), (256, 256))):
            return False
    dropout_ok = not stack.cudnn_sdpa_dropout_sixteenths or (
        call.dropout_p * 16 == math.floor(call.dropout_p * 16)
    )
    return (
        stack.cudnn_version >= 90000
        and (8, 0) <= device.sm <= (12, 1)
        and call.dtype in _HALF
        and dropout_ok
        and not (call.dropout_p > 0 and 91100 < stack.cudnn_version < 91400)
        and _dense_ok(call, ignore_singleton_last_dim=True, supports_gqa=True)
        and max(call.q_shape[0], call.q_shape[1]) <= 65535
        and d_qk <= head_limit
        and d_v <= head_limit
        and d_qk % 8 == 0
        and d_v % 8 == 0
        and call.k_shape[2] != 1
        and not (call.dropout_p > 0 and call.q_shape[2] == 1)
    )


def _flash_ok(call: SdpaCall, device: DeviceSpec) -> bool:
    head = call.q_shape[-1]
    if call.requires_grad and ((8, 6) <= device.sm <= (8, 9) or (12, 0) <= device.sm <= (12, 1)):
        if not (head <= 192 or (call.dropout_p == 0 and head > 224)):
            return False
    return (
        not call.has_mask
        and (8, 0) <= device.sm <= (12, 1)
        and call.dtype in _HALF
        and call.q_shape[-1] == call.k_shape[-1] == call.v_shape[-1]
        and head <= 256
        and not (call.is_causal and call.q_shape[2] != call.k_shape[2])
        and _dense_ok(call, ignore_singleton_last_dim=True, supports_gqa=True)
    )


def _efficient_ok(call: SdpaCall, device: DeviceSpec) -> bool:
    half = call.dtype in _HALF
    # minimum_gemm_alignment: 4 on sm80+, raised to 128 bits / element with tensor cores
    if device.sm >= (8, 0):
        alignment = 8 if half else 4
    elif device.sm >= (7, 0) and half:
        alignment = 8
    else:
        alignment = 1
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.float32, torch.bfloat16)
    if device.sm < (8, 0):
        dtypes = (torch.float16, torch.float32)
    element = 2 if half else 4
    offsets_aligned = device.sm < (8, 0) or all(
        offset % (alignment * element) == 0 for offset in call.storage_offset_bytes
    )
    return (
        (5, 0) <= device.sm <= (12, 1)
        and call.q_shape[-1] == call.k_shape[-1]
        and call.q_shape[-1] % alignment == 0
        and call.v_shape[-1] % alignment == 0
        and offsets_aligned
        and _dense_ok(call, ignore_singleton_last_dim=False, supports_gqa=False)
        and call.dtype in dtypes
    )


def enabled_backends() -> set[SdpaBackend]:
    """The kernels the user left enabled (``torch.backends.cuda.enable_*_sdp``, ``sdpa_kernel``):
    PyTorch's ``check_runtime_disabled_*`` filters read the same global flags."""
    flags = {
        SdpaBackend.CUDNN: torch.backends.cuda.cudnn_sdp_enabled,
        SdpaBackend.FLASH: torch.backends.cuda.flash_sdp_enabled,
        SdpaBackend.EFFICIENT: torch.backends.cuda.mem_efficient_sdp_enabled,
        SdpaBackend.MATH: torch.backends.cuda.math_sdp_enabled,
    }
    return {backend for backend, enabled in flags.items() if enabled()}


def choose_backend(call: SdpaCall, device: DeviceSpec, stack: CudaStack) -> SdpaBackend:
    """The kernel ``F.scaled_dot_product_attention`` runs for ``call`` on ``device``.

    Kernels the user disabled are skipped; with every kernel disabled (an error on the GPU) the
    math kernel is assumed.
    """
    order = [SdpaBackend.FLASH, SdpaBackend.EFFICIENT, SdpaBackend.MATH, SdpaBackend.CUDNN]
    if stack.cudnn_sdpa_preferred and stack.cudnn_version > 91500 and device.sm[0] in (9, 10):
        order = [SdpaBackend.CUDNN, SdpaBackend.FLASH, SdpaBackend.EFFICIENT, SdpaBackend.MATH]
    enabled = enabled_backends()
    for backend in (b for b in order if b in enabled):
        if backend is SdpaBackend.CUDNN and _cudnn_ok(call, device, stack):
            return backend
        if backend is SdpaBackend.FLASH and _flash_ok(call, device):
            return backend
        if backend is SdpaBackend.EFFICIENT and _efficient_ok(call, device):
            return backend
        if backend is SdpaBackend.MATH:
            return backend
    return SdpaBackend.MATH
