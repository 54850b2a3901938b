"""cuDNN convolution workspaces: what a conv allocates beyond its outputs, by class of call.

PyTorch runs a CUDA convolution through cuDNN's v8/v9 API: with ``cudnn.benchmark`` off (its
default) cuDNN's heuristics rank the engines, PyTorch takes the first whose workspace it can
allocate, allocates that workspace from the caching allocator and frees it when the call
returns (``run_single_conv`` / ``try_plans`` in ``aten/src/ATen/native/cudnn/Conv_v8.cpp``). So
the workspace is a transient block made after the outputs and freed before the next operator.

Its size depends on the engine cuDNN picks, which memfit cannot run on a laptop. These classes
were read from the per-operator scratch the validation zoo measured on an H200 (torch 2.11,
cuDNN 9.19; bench/results/validation_traces_h200.jsonl.gz joined to the convolutions' shapes by
bench/conv_evidence.py, bench/results/conv_evidence.json), on tensor-core dtypes (fp16, bf16,
and fp32 with ``torch.backends.cudnn.allow_tf32``, PyTorch's default):

* NCHW input, not depthwise, not a plain 1x1 convolution ("general"): the engines work in
  NHWC, so cuDNN transposes the input, the output and the weight through its workspace:
  ``x + y + w`` bytes, in the forward and in each of the backward's two passes (``dx``, ``dy``).
  Channels are padded: a 16-bit input with fewer than 8 to 8, and grouped convolutions'
  channels per group, in and out, to the next power of two (RegNet's groups of 24: 1.33x).
* Image stems (fewer than 8 input channels): the same, but only for kernels of 7 and more in
  the forward (ResNet's 7x7, ViT's 16x16 patches; none for 3x3 stride-2 stems or 4x4 patches)
  and, in float32, of 4 and more in the backward.
* A 1x1 filter needs no copy (its layout is the same in both); a strided 1x1 from fewer than
  64 channels takes none (and none in its float32 backward), and in float32 one reading 56x56
  or more only the input's copy (ResNet's first downsample, at batch 64 and 128).
* NCHW 1x1, stride 1 ("pointwise", a matrix product per image): ``x + y`` when the output has
  at most 7x7 positions (16-bit: 14x14 when both channel counts are 384 or more), else none.
  Its weight gradient takes the smaller of ``x + dy`` and one float32 weight gradient per image
  (``N * C_in * C_out * 4``: split over the batch, then summed). Through ``x + dy`` above 7x7
  positions it also keeps float32 partial sums of the weight from 12,544 positions ``N*H*W``:
  2 copies in bf16, 3 in fp16 (ResNet-50's layer3 1x1s at 14x14, batch 64: 32.63 MiB, not
  30.63, eleven times a step); with a float32 weight of 2 MiB or more, 3 in either dtype from
  25,088 positions, none below (ResNet-50's layer4.0.conv1, 1024->512 at 14x14).
* Depthwise NCHW (MobileNet, EfficientNet): none, but in float16 at stride 1 from 32 channels
  and 28x28 positions with kernels up to 5x5, whose weight gradient takes a float32 copy of the
  input (and 0.2-0.5 MB more).
* Channels-last input (ConvNeXt's convolutions see the channels-last tensor its ``permute``
  back leaves): none in the forward, and none worth counting for the input gradient (131-400
  bytes, a few MB at most). The weight gradient: a 7x7 depthwise one in float32 takes four
  float32 copies of ``x + dy`` and ~8 MiB above 14x14 positions (318 MB to 1.24 GB measured,
  within 0.5%), none at or below; in 16-bit a quarter of the input; 3x3 depthwise ones little.
  Grouped ones take twice the float32 input (26-181 MB), others about 8 MiB of partial sums
  in float32 (2-34 MB measured, median 8.5) and half that in 16-bit (0-17 MB). A gradient of
  the output that is not channels-last is copied to it first (``dy``: ConvNeXt's last 1x1).
  Measured without a bias: a bias gradient is a sum of ``dy`` after cuDNN returns, with its
  own reduction buffer (``memfit.trace.cuda.reductions``), which the per-operator
  measurements these classes were first read from had counted as workspace.

Two details decide reserved memory rather than allocated (a transient that is one block bigger
than the cached block it would have reused takes a new segment), measured to the byte on the
H200 by bench/conv_probe.py (bench/results/conv_probe_h200.json, 280 calls in isolation, and
seven zoo training steps in bench/results/snapshots):

* Every workspace carries a tail beyond the copies: 16 or 147 bytes in 108 of the 110 forward
  and input-gradient calls whose copies these classes size (the other two, 16-bit stems' input
  gradients, 199 KiB), so it never fits an activation-sized block; 16 is added. The weight
  gradient split per image (pointwise) was measured without one.
* A weight gradient of the "general" class also keeps split-K partial sums: ``s`` float32 copies
  of the weight, about 8 MiB in all. TensorFloat-32: ``s = min(16, 8 MiB // weight)`` once
  ``N*H*W`` of the output reaches 4096 (ResNet's 3x3s: 14 copies, 2.0-7.9 MiB); 16-bit: up to
  13 copies from 65536 positions, up to 4 from 16384, none below. A 16-bit strided 1x1 keeps
  fewer: 7 from 65536 positions, 3 from 16384 (ResNet-50's downsamples, measured 7 at 100,352
  positions, 3 at 50,176 and 25,088).
* A 16-bit image stem's weight gradient (odd kernel, stride below it) also keeps float32
  partial sums, whatever the batch: 2 KiB per kernel tap for each of ``64 - kernel // 2`` rows
  (ResNet-50's 7x7: 6,121,600 B with its tail; RegNet-X's 3x3 3->32 bf16: 1,161,344). Not for
  float16 kernels of 7 and more (another engine) nor patchify stems (stride = kernel).

Against every measured call (bench/results/conv_classes.md, ``bench/conv_evidence.py
--check``): within 10% (or 1 MiB) for 1,912 of 2,108 calls, 1,363 of 1,519 on the
configurations the classes were not read from. Summed per class over those held-out calls:
general forward -0.0%, general backward -6%, pointwise backward -10%, stems backward -11%,
pointwise forward +21%; channels-last backward 40-89% under, because those calls (ConvNeXt's,
with biases) measured their bias gradients' reduction buffers too, which are modelled apart.

Known limitations:
    * Fitted on one stack (H200, cuDNN 9.19, torch 2.11): other chips and cuDNN versions rank
      engines differently. Chips before sm80 (no bf16 / TF32 tensor cores) get no workspace.
    * cuDNN's heuristics are not a formula: single calls differ from these classes by up to
      2x either way (float32 stems, channels-last 1x1 convolutions, a 1x1 at 28x28 in RegNet),
      and ``torch.backends.cudnn.benchmark = True`` (measured engine choice) is not modelled.
    * Split-K partial sums are a rule of thumb over cuDNN's heuristics (64-channel 3x3s keep
      14 copies, not 16; some 16-bit 3x3 calls 6 instead of 4; a bf16 strided 1x1 256->512
      at batch 32 keeps 2, not 3; the pointwise counts for weights of 2 MiB rest on one
      shape at two batch sizes; 16-bit 1x1s at 7x7 keep 0.5-3.5 MiB, not modelled;
      the pointwise threshold lies between 6,272 and 12,544 positions, unmeasured; channels-last
      weight gradients other than 7x7 depthwise ones: 2-34 MB measured for ~8 MiB; the float16
      depthwise rule rests on five calls, from one model and one probe shape; the stem's
      partial sums rest on a 7x7 with 64 filters and 3x3s with 32 (bf16) and 16 (fp16, 23 KB
      more than the rule), the strided 1x1 counts on two shapes at three batch sizes).
    * fp32 without TF32, 1-D and 3-D convolutions and transposed convolutions get no workspace
      (not measured; bench/conv_probe.py measures the first).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from memfit.trace.cuda.split_k import (
    SPLIT_K_BYTES,
    pointwise_split_k_bytes,
    split_k_bytes,
    stem_split_k_bytes,
)

__all__ = [
    "conv_forward_workspace",
    "conv_backward_workspaces",
    "conv_layout_copies",
    "conv_class",
    "CONV_FORWARD_OPS",
]

aten = torch.ops.aten
CONV_FORWARD_OPS = (aten.convolution, aten.conv2d)
_F32 = 4
_SMALL_POSITIONS = 7 * 7  # 1x1 convolutions at or below this many output positions transpose
_MID_POSITIONS = 14 * 14  # ... and 16-bit ones up to this many with this many channels:
_WIDE_CHANNELS = 384
_RGB_CHANNELS = 8  # fewer input channels: an image stem, padded to 8 in 16-bit
_STEM_FORWARD_KERNEL = 7  # stems with smaller kernels (3x3 stride 2, 4x4 patches) get none
_STEM_BACKWARD_KERNEL = 4  # ... and in float32 backward, smaller than this
_CL_DEPTHWISE_POSITIONS = 14 * 14
_CL_DEPTHWISE_KERNEL = 7  # channels-last depthwise weight gradients below this take little
_FP16_DEPTHWISE_KERNEL = 5  # float16 NCHW depthwise weight gradients up to this kernel,
_FP16_DEPTHWISE_CHANNELS = 32  # ... from this many channels
_FP16_DEPTHWISE_POSITIONS = 28 * 28  # ... and this many positions take a float32 input copy
_FP16_DEPTHWISE_EXTRA = 256 << 10  # and 0.18-0.54 MB more, measured
_NARROW_CHANNELS = 64  # strided 1x1 convolutions from fewer channels take none (fp32 backward)
_LARGE_SIDE = 56
_TAIL = 16  # bytes every cuDNN workspace has beyond its copies (16 or 147 measured)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _uses_tensor_cores(x: torch.Tensor) -> bool:
    if x.dtype in (torch.float16, torch.bfloat16):
        return True
    return x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def _channels_last(x: torch.Tensor, w: torch.Tensor) -> bool:
    """PyTorch's ``cudnn_conv_suggest_memory_format``: channels-last if input or weight is."""
    return any(
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
        for t in (x, w)
    )


def _padded(width: int, groups: int, element_size: int) -> int:
    """Channels per group as the NHWC engines lay them out."""
    if groups > 1 and width > 1:
        return 1 << (width - 1).bit_length()
    if element_size == 2 and width < _RGB_CHANNELS:
        return _RGB_CHANNELS
    return width


def _transposes(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, groups: int) -> int:
    """Bytes of the NHWC copies of input, output and weight, channels per group padded."""
    size = x.element_size()
    c_in, c_out = x.shape[1] // groups, y.shape[1] // groups
    in_scale = _padded(c_in, groups, size) / c_in
    out_scale = _padded(c_out, groups, size) / c_out if groups > 1 else 1.0
    # a 1x1 filter is laid out the same in both layouts: no copy of the weight
    weight = 0 if all(k == 1 for k in w.shape[2:]) else _nbytes(w) * in_scale * out_scale
    return int(_nbytes(x) * in_scale + _nbytes(y) * out_scale + weight)


def _strided_pointwise_forward(x: torch.Tensor, y: torch.Tensor) -> int | None:
    """A 1x1 with a stride: none from fewer than 64 channels; in float32 from 56x56 or more
    only the input's copy (ResNet's first downsample, at batch 64 and 128)."""
    if x.shape[1] < _NARROW_CHANNELS:
        return 0
    if x.element_size() == _F32 and min(x.shape[2:]) >= _LARGE_SIDE:
        return _nbytes(x)
    return None


def _pointwise_transposes(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> bool:
    positions = math.prod(y.shape[2:])
    if positions <= _SMALL_POSITIONS:
        return True
    wide = min(x.shape[1], w.shape[0]) >= _WIDE_CHANNELS
    return x.element_size() == 2 and positions <= _MID_POSITIONS and wide


def _classify(x: torch.Tensor, w: torch.Tensor, stride: Any, padding: Any, groups: int) -> str:
    if groups > 1 and groups == x.shape[1]:
        return "depthwise"
    if groups == 1 and x.shape[1] < _RGB_CHANNELS:
        return "stem"
    if groups == 1 and all(k == 1 for k in w.shape[2:]):
        strides = stride if isinstance(stride, list | tuple) else [stride]
        pads = padding if isinstance(padding, list | tuple) else [padding]
        if all(s == 1 for s in strides) and all(p == 0 for p in pads if isinstance(p, int)):
            return "pointwise"
    return "general"


def conv_class(x: torch.Tensor, w: torch.Tensor, stride: Any, padding: Any, groups: int) -> str:
    """The class of a call these rules tell apart: stem, pointwise, depthwise or general,
    prefixed ``channels-last`` for a channels-last call."""
    kind = _classify(x, w, stride, padding, groups)
    return f"channels-last {kind}" if _channels_last(x, w) else kind


def _modelled(x: Any, w: Any, transposed: bool) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and x.dim() == 4
        and not transposed
        and _uses_tensor_cores(x)
    )


def conv_forward_workspace(
    x: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    stride: Any,
    padding: Any,
    groups: int,
    transposed: bool = False,
) -> int:
    """Bytes of cuDNN's workspace for one forward convolution (0 when not modelled)."""
    if not _modelled(x, w, transposed) or _channels_last(x, w):
        return 0
    nbytes = _forward_bytes(x, w, y, stride, padding, groups)
    return nbytes + _TAIL if nbytes else 0


def _forward_bytes(
    x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, stride: Any, padding: Any, groups: int
) -> int:
    kind = _classify(x, w, stride, padding, groups)
    if kind == "depthwise":
        return 0
    if kind == "pointwise":
        return _nbytes(x) + _nbytes(y) if _pointwise_transposes(x, w, y) else 0
    if kind == "stem" and max(w.shape[2:]) < _STEM_FORWARD_KERNEL:
        return 0
    if groups == 1 and all(k == 1 for k in w.shape[2:]):
        strided = _strided_pointwise_forward(x, y)
        if strided is not None:
            return strided
    return _transposes(x, y, w, groups)


def conv_backward_workspaces(
    dy: torch.Tensor,
    x: torch.Tensor,
    w: torch.Tensor,
    stride: Any,
    padding: Any,
    groups: int,
    output_mask: Any,
    transposed: bool = False,
) -> tuple[int, int]:
    """Bytes of cuDNN's workspaces for one ``convolution_backward``: (data, weight).

    cuDNN computes the input gradient, then the weight gradient, each with its own workspace
    freed before the next step (``cudnn_convolution_backward``); a gradient that is not needed
    (``output_mask``) gets none.
    """
    if not _modelled(x, w, transposed):
        return 0, 0
    kind = _classify(x, w, stride, padding, groups)
    data, weight = _backward_bytes(kind, dy, x, w, groups)
    if kind == "stem" and weight and not _channels_last(x, w):
        weight += stem_split_k_bytes(x, w, stride)
    mask = list(output_mask) + [True, True]
    return (data if mask[0] else 0), (weight if mask[1] else 0)


def conv_layout_copies(dy: Any, x: Any, w: Any) -> list[int]:
    """Bytes of the copies a cuDNN ``convolution_backward`` makes of ``dy`` and ``x`` first:
    each is made contiguous in the call's memory format (channels-last when the input or the
    weight is), before the gradients are allocated, and freed after the weight gradient."""
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (dy, x, w)):
        return []
    layout = torch.channels_last if _channels_last(x, w) else torch.contiguous_format
    return [_nbytes(t) for t in (dy, x) if not t.is_contiguous(memory_format=layout)]


def _channels_last_weight_bytes(
    kind: str, dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, groups: int
) -> int:
    """A channels-last weight gradient's workspace (bench/conv_probe.py's channels-last calls,
    no bias; ConvNeXt-nano's recorded step)."""
    f32 = x.element_size() == _F32
    if kind == "depthwise":
        if min(w.shape[2:]) < _CL_DEPTHWISE_KERNEL:
            return 0  # 3x3: 0.15-5.9 MB measured
        if not f32:
            return _nbytes(x) // 4
        if math.prod(dy.shape[2:]) <= _CL_DEPTHWISE_POSITIONS:
            return 0
        return 4 * (x.numel() + dy.numel()) * _F32 + SPLIT_K_BYTES
    if groups > 1:
        return 2 * _nbytes(x) if f32 else 0
    return SPLIT_K_BYTES if f32 else SPLIT_K_BYTES // 2


def _fp16_depthwise_weight_bytes(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> int:
    """An NCHW depthwise weight gradient in float16 at stride 1, from 32 channels and 28x28
    positions, kernels up to 5x5: a float32 copy of the input and 0.2-0.5 MB more
    (bench/conv_probe.py's 32 channels at 112x112, batch 32 and 128; MobileNet-V3's 72 at 56x56
    and 120 at 28x28 with 5x5 kernels, recorded). None in bf16, for 16 channels, at 14x14 and
    7x7 (MobileNet-V3's later stages), for 7x7 kernels or with a stride."""
    if x.dtype != torch.float16 or tuple(dy.shape[2:]) != tuple(x.shape[2:]):
        return 0
    if max(w.shape[2:]) > _FP16_DEPTHWISE_KERNEL or x.shape[1] < _FP16_DEPTHWISE_CHANNELS:
        return 0
    if math.prod(x.shape[2:]) < _FP16_DEPTHWISE_POSITIONS:
        return 0
    return 2 * _nbytes(x) + _FP16_DEPTHWISE_EXTRA


def _backward_bytes(
    kind: str, dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, groups: int
) -> tuple[int, int]:
    if _channels_last(x, w):
        return 0, _channels_last_weight_bytes(kind, dy, x, w, groups)
    if kind == "depthwise":
        return 0, _fp16_depthwise_weight_bytes(dy, x, w)
    if kind == "pointwise":
        both = _nbytes(x) + _nbytes(dy) + _TAIL
        split = x.shape[0] * x.shape[1] * w.shape[0] * _F32  # measured without a tail
        data = both if _pointwise_transposes(x, w, dy) else 0
        return data, split if split < both else both + pointwise_split_k_bytes(dy, w)
    if kind == "stem" and x.element_size() == _F32 and max(w.shape[2:]) < _STEM_BACKWARD_KERNEL:
        return 0, 0
    pointwise = groups == 1 and all(k == 1 for k in w.shape[2:])
    if pointwise and x.element_size() == _F32 and x.shape[1] < _NARROW_CHANNELS:
        return 0, 0
    both = _transposes(x, dy, w, groups) + _TAIL
    split_k = split_k_bytes(dy, w, pointwise) if kind == "general" else 0
    return both, both + split_k
