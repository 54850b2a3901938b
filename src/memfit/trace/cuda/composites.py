"""Composite operators whose code takes a different branch on CUDA than on the CPU.

Some ATen composites look at the device: ``dropout`` runs the fused ``native_dropout`` on CUDA
(saving a 1-byte mask) but multiplies by a float noise tensor on the CPU (saving a mask as large
as the input); ``rms_norm`` calls ``_fused_rms_norm`` on CUDA (saving one float per row) but
decomposes on the CPU (upcasting and saving several full-size tensors);
``scaled_dot_product_attention`` picks a fused kernel on CUDA; nn.Transformer's fused inference
operators allocate a layer's intermediate tensors inside one kernel (``fast_path``). While
``cuda_composites`` is active, CPU tensors take the CUDA branch: kernels registered at the
AutogradCPU key (through ``torch.library``, removed on exit) call the same ATen operators the
CUDA branch calls, so autograd records what the GPU would save. (In-place ``dropout_`` takes the
unfused path on both devices and needs nothing.)

Known limitations:
    * Only the composites above are redirected; ``tests/trace/test_cuda_composites.py`` compares
      forward op sequences with fake CUDA tensors where the installed torch is a CUDA build.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from memfit.devices import DeviceSpec
from memfit.errors import UnsupportedModelError
from memfit.trace.cuda.fast_path import make_encoder_layer_fwd, make_native_mha
from memfit.trace.cuda.sdpa import SdpaBackend, SdpaCall, choose_backend
from memfit.trace.cuda.stack import CudaStack

__all__ = ["cuda_composites"]

_LOCK = threading.Lock()
aten = torch.ops.aten
# the CUDA kernel rms_norm calls (PyTorch 2.9+: a list of normalized dimensions, and the rstd
# it saves); 2.8's operator of that name is MPS's (an int, one output), and its CUDA rms_norm
# decomposes as on the CPU
_CUDA_FUSED_RMS_NORM = (
    hasattr(aten, "_fused_rms_norm")
    and aten._fused_rms_norm.default._schema.arguments[1].name == "normalized_shape"
)


def _dropout(keyset: Any, input: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    if train and 0 < p < 1 and input.numel() > 0:
        return aten.native_dropout.default(input, p, train)[0]
    if not train or p == 0 or input.numel() == 0:
        return input
    return input * 0


def _rms_norm(
    keyset: Any,
    input: torch.Tensor,
    normalized_shape: list[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    return aten._fused_rms_norm.default(input, normalized_shape, weight, eps)[0]


def _fused_rms_norm_cpu(
    input: torch.Tensor,
    normalized_shape: list[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    # A CPU kernel makes the AutogradCPU slot take the operator's own autograd formula (as on
    # CUDA) instead of its decomposition; fake tensors never reach it (FakeTensorMode handles
    # them above the CPU key), real CPU tensors get the right numbers.
    dims = tuple(range(-len(normalized_shape), 0))
    upcast = input.float()
    epsilon = eps if eps is not None else torch.finfo(input.dtype).eps
    rstd = torch.rsqrt(upcast.pow(2).mean(dims, keepdim=True) + epsilon)
    out = upcast * rstd
    if weight is not None:
        out = out * weight
    return out.to(input.dtype), rstd


def _boolean_mask_to_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> Any:
    # convert_boolean_attn_mask in aten/src/ATen/native/transformers/attention.cpp
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.where(mask.logical_not(), -math.inf, 0.0).to(dtype)


def _pad_mask_for_efficient(mask: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> Any:
    # preprocess_mask: the kernel wants 16-element aligned strides; pad, then slice back
    if any(stride % 16 for stride in mask.stride()[:-1]):
        last = mask.shape[-1]
        mask = F.pad(mask, (0, 16 - last % 16))[..., :last]
    return mask.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])


_CUDNN_BIAS_GRAD = (
    "scaled_dot_product_attention gets an attention bias that requires grad (shape {shape}: a "
    "learned position bias, as T5's), and on this GPU it runs cuDNN attention, whose autograd "
    'formula in this torch gives the bias no gradient: the step raises ("not differentiable '
    "with respect to argument 'attn_bias'\"). Disable cuDNN attention, "
    "torch.backends.cuda.enable_cudnn_sdp(False) (memfit follows it), or load the model with "
    "attn_implementation='eager'"
)


def _make_sdpa(device: DeviceSpec, stack: CudaStack, chosen: list[SdpaBackend]) -> Any:
    def sdpa(
        keyset: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        *,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        call = SdpaCall.of(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa)
        backend = choose_backend(call, device, stack)
        chosen.append(backend)
        mask = _boolean_mask_to_additive(attn_mask, query.dtype)
        if backend is SdpaBackend.CUDNN:
            if mask is not None and mask.requires_grad and torch.is_grad_enabled():
                raise UnsupportedModelError(_CUDNN_BIAS_GRAD.format(shape=tuple(mask.shape)))
            return aten._scaled_dot_product_cudnn_attention.default(
                query,
                key,
                value,
                mask,
                call.requires_grad,
                dropout_p,
                is_causal,
                False,
                scale=scale,
            )[0]
        if backend is SdpaBackend.FLASH:
            head = query.shape[-1]
            pad = (8 - head % 8) % 8
            og_scale = scale if scale is not None else 1.0 / math.sqrt(head)
            q, k, v = (F.pad(t, (0, pad)) if pad else t for t in (query, key, value))
            out = aten._scaled_dot_product_flash_attention.default(
                q, k, v, dropout_p, is_causal, False, scale=og_scale
            )[0]
            return out[..., :head] if pad else out
        if backend is SdpaBackend.EFFICIENT:
            if mask is not None:
                mask = _pad_mask_for_efficient(mask, query, key)
            return aten._scaled_dot_product_efficient_attention.default(
                query, key, value, mask, call.requires_grad, dropout_p, is_causal, scale=scale
            )[0]
        return aten._scaled_dot_product_attention_math.default(
            query, key, value, mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa
        )[0]

    return sdpa


@contextlib.contextmanager
def cuda_composites(device: DeviceSpec, stack: CudaStack) -> Iterator[list[SdpaBackend]]:
    """Make CPU tensors take the CUDA branch of device-dependent composites.

    Yields:
        The list of SDPA backends chosen, one per call, for reporting.
    """
    chosen: list[SdpaBackend] = []
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = torch.library.Library("aten", "IMPL")
        try:
            library.impl("dropout", _dropout, "AutogradCPU", with_keyset=True)
            if _CUDA_FUSED_RMS_NORM:
                library.impl("_fused_rms_norm", _fused_rms_norm_cpu, "CPU")
                library.impl("rms_norm", _rms_norm, "AutogradCPU", with_keyset=True)
            library.impl(
                "scaled_dot_product_attention",
                _make_sdpa(device, stack, chosen),
                "AutogradCPU",
                with_keyset=True,
            )
            # nn.Transformer's inference fast path: one operator each, a layer's worth of
            # intermediate tensors inside (memfit.trace.cuda.fast_path)
            for name, make in (
                ("_transformer_encoder_layer_fwd", make_encoder_layer_fwd),
                ("_native_multi_head_attention", make_native_mha),
            ):
                library.impl(name, make(device, stack), "AutogradCPU", with_keyset=True)
            yield chosen
        finally:
            library._destroy()
