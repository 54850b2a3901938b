"""Float32 partial sums that cuDNN keeps beside a convolution's weight gradient (split-K: the
sum over output positions split into parts, each a float32 copy of the weight, then added).
Rules read from the H200 probes (bench/results/conv_probe_h200.json, its held-out grid) and the
ResNet-50 recordings (bench/results/resnet50_plan_snapshots.md); their limits are listed in
``memfit.trace.cuda.convolution``, which adds these bytes to its workspaces.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["SPLIT_K_BYTES", "pointwise_split_k_bytes", "split_k_bytes", "stem_split_k_bytes"]

_F32 = 4
_SMALL_POSITIONS = 7 * 7  # pointwise calls at or below this many output positions keep none
_STEM_FORWARD_KERNEL = 7  # float16 stems from this kernel run another engine, without them
SPLIT_K_BYTES = 8 << 20  # the weight gradient's float32 partial sums come to about this
# (minimum output positions N*H*W, most partial copies) per element size, largest first
_SPLIT_K = {4: ((4096, 16),), 2: ((65536, 13), (16384, 4))}
# a 16-bit pointwise weight gradient through the input's and output gradient's copies also
# keeps float32 partial sums of the weight from this many output positions N*H*W (measured
# with them at 12544 and 25088, without at 6272): this many copies per 16-bit dtype
_POINTWISE_SPLIT_K_POSITIONS = 12544
_POINTWISE_SPLIT_K = {torch.bfloat16: 2, torch.float16: 3}
# ... and with a float32 weight of 2 MiB or more (ResNet-50's layer4.0.conv1, 1024->512 at
# 14x14) from twice the positions (none at 12,544), 3 copies in either dtype (at 25,088)
_POINTWISE_WIDE_WEIGHT = 2 << 20
_POINTWISE_WIDE_POSITIONS = 2 * _POINTWISE_SPLIT_K_POSITIONS
_POINTWISE_WIDE_COPIES = 3
# a 16-bit strided 1x1 weight gradient keeps fewer partial copies than _SPLIT_K's 13 and 4:
# (minimum output positions N*H*W, most partial copies), largest first (ResNet-50's
# downsamples: 7 at 100,352 positions, 3 at 50,176 and at 25,088, none at 12,544 and below)
_STRIDED_POINTWISE_SPLIT_K = ((65536, 7), (16384, 3))
# a 16-bit image stem's weight gradient (odd kernel, overlapping windows) keeps float32
# partial sums of 2 KiB per kernel tap for each of 64 - kernel // 2 rows: 122 KiB a tap for
# ResNet's 7x7, 126 KiB for 3x3 stems, at any batch; with a tail 128 bytes longer
_STEM_SPLIT_K_TAP = 2048
_STEM_SPLIT_K_ROWS = 64
_STEM_SPLIT_K_TAIL = 128


def split_k_bytes(dy: torch.Tensor, w: torch.Tensor, pointwise: bool = False) -> int:
    """Float32 partial sums of a weight gradient split over the output positions (a 16-bit
    1x1 of this class, strided, by _STRIDED_POINTWISE_SPLIT_K)."""
    positions = dy.shape[0] * math.prod(dy.shape[2:])
    weight = w.numel() * _F32
    rules = _SPLIT_K.get(dy.element_size(), ())
    if pointwise and dy.element_size() == 2:
        rules = _STRIDED_POINTWISE_SPLIT_K
    for least, most in rules:
        if positions >= least:
            return min(most, SPLIT_K_BYTES // weight) * weight
    return 0


def stem_split_k_bytes(x: torch.Tensor, w: torch.Tensor, stride: Any) -> int:
    """Float32 partial sums of a 16-bit image stem's weight gradient (odd kernel, stride below
    it): 2 KiB per kernel tap for each of 64 - kernel // 2 rows, whatever the batch
    (ResNet-50's 7x7 3->64 in bf16: +6,121,600 B at batch 32, 64 and 128; RegNet-X's 3x3 3->32
    bf16: +1,161,344; MobileNet-V3's 3x3 3->16 fp16: +1,184,400, 23 KB above this). Not
    for float16 kernels of 7 and more (another engine, measured below the copies) nor for
    patchify stems (ViT's 16x16, Swin's and ConvNeXt's 4x4, stride = kernel)."""
    if x.element_size() != 2:
        return 0
    kernels = list(w.shape[2:])
    strides = list(stride) if isinstance(stride, list | tuple) else [stride]
    if len(strides) == 1:
        strides *= len(kernels)
    if any(k % 2 == 0 for k in kernels) or any(
        s >= k for s, k in zip(strides, kernels, strict=False)
    ):
        return 0
    kernel = max(kernels)
    if x.dtype == torch.float16 and kernel >= _STEM_FORWARD_KERNEL:
        return 0
    taps = math.prod(w.shape[2:])
    return taps * _STEM_SPLIT_K_TAP * (_STEM_SPLIT_K_ROWS - kernel // 2) + _STEM_SPLIT_K_TAIL


def pointwise_split_k_bytes(dy: torch.Tensor, w: torch.Tensor) -> int:
    """Float32 partial sums of a 16-bit pointwise weight gradient made through the NHWC
    copies, at more than 7x7 output positions (ResNet-50's layer3 1x1s at batch 64 and 128)."""
    if math.prod(dy.shape[2:]) <= _SMALL_POSITIONS:
        return 0
    positions, weight = dy.shape[0] * math.prod(dy.shape[2:]), w.numel() * _F32
    if weight >= _POINTWISE_WIDE_WEIGHT:
        wide = positions >= _POINTWISE_WIDE_POSITIONS and dy.dtype in _POINTWISE_SPLIT_K
        return _POINTWISE_WIDE_COPIES * weight if wide else 0
    if positions < _POINTWISE_SPLIT_K_POSITIONS:
        return 0
    return _POINTWISE_SPLIT_K.get(dy.dtype, 0) * weight
