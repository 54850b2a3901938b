"""The time of one operator: on the GPU (by its class's roofline) and on the host (dispatch).

Device time, per class of ``memfit.cost.classes``::

    products, attention, convolutions:  max(flops / (rate * e_class * waves), bytes / (BW * e_bw))
    everything else:                    bytes / (BW * e_class)
    plus kernels * kernel_s (the least time a kernel takes)

``rate`` is the datasheet tensor-core rate of the operator's dtype and ``BW`` the datasheet
bandwidth. ``waves`` is a matrix product's wave quantization (Volkov 2010; NVIDIA's "Matrix
Multiplication Background" user guide): its output is computed in tiles of ``matmul_tile``
elements, one per multiprocessor at a time, so a product with fewer tiles than
multiprocessors leaves some idle (cuBLAS then splits K, ``_split_k``), and one with
``1.2 x`` as many runs two waves, the second mostly idle. Micro-batching shrinks ``M``, and
with it the tiles: this is what makes small micro-batches slow.

Host time: per operator, by phase (``Calibration.host_*``), plus what a technique's Python
charged to it (``memfit.step.overhead``).
"""

from __future__ import annotations

import math

import torch

from memfit.cost.calibration import Calibration
from memfit.cost.classes import OpWork
from memfit.devices import DeviceSpec

__all__ = ["device_seconds", "host_seconds", "tensor_rate", "wave_efficiency"]

_BANDWIDTH_CLASS = {
    "pointwise": "bandwidth_efficiency",
    "copy": "copy_efficiency",
    "fill": "bandwidth_efficiency",
    "custom": "bandwidth_efficiency",
    "reduction": "reduction_efficiency",
    "norm": "norm_efficiency",
    "batch_norm": "batch_norm_efficiency",
    "softmax": "reduction_efficiency",
    "gather": "reduction_efficiency",
    "scatter": "reduction_efficiency",
    "sync": "reduction_efficiency",
    "optimizer": "optimizer_efficiency",
}


def tensor_rate(device: DeviceSpec, dtype: torch.dtype) -> float:
    """The datasheet FLOP/s of products in ``dtype`` (float32: CUDA cores, PyTorch's default)."""
    if dtype == torch.bfloat16:
        return device.bf16_flops or device.fp32_flops
    if dtype == torch.float16:
        return device.fp16_flops or device.fp32_flops
    return device.fp32_flops


def wave_efficiency(shape: tuple[int, ...], device: DeviceSpec, tile: int) -> float:
    """The fraction of the multiprocessors a product of ``(batch, M, N, K)`` keeps busy."""
    if not shape:
        return 1.0
    batch, m, n, k = shape
    tiles = batch * math.ceil(m * n / tile)
    tiles *= _split_k(tiles, k, device.num_sms)
    waves = math.ceil(tiles / device.num_sms)
    return tiles / (waves * device.num_sms)


def _unaligned(work: OpWork) -> bool:
    """A 16-bit product with a dimension that is not a multiple of 8 elements (16 bytes)."""
    if work.dtype not in (torch.bfloat16, torch.float16) or not work.shape:
        return False
    return any(d % 8 for d in work.shape[1:])


def _split_k(tiles: int, k: int, sms: int) -> int:
    """How many slices of K cuBLAS computes in parallel when there are too few tiles."""
    if tiles >= sms:
        return 1
    return max(1, min(sms // tiles, k // 1024))


def device_seconds(work: OpWork, device: DeviceSpec, calibration: Calibration) -> float:
    """The GPU time of one operator call."""
    if work.kind == "none":
        return 0.0
    overhead = work.kernels * calibration.kernel_s
    if work.kind in ("matmul", "attention", "conv"):
        efficiency = {
            "matmul": calibration.matmul_efficiency,
            "conv": calibration.conv_efficiency,
            "attention": calibration.attention_efficiency,
        }[work.kind]
        if work.kind == "attention" and "backward" in work.op:
            efficiency = calibration.attention_backward_efficiency
        if work.kind == "matmul":
            efficiency *= wave_efficiency(work.shape, device, calibration.matmul_tile)
            if _unaligned(work):
                efficiency *= calibration.unaligned_matmul_factor
        compute = work.flops / (tensor_rate(device, work.dtype) * efficiency)
        memory = work.bytes / (device.bandwidth_bytes_s * calibration.bandwidth_efficiency)
        return max(compute, memory) + overhead
    efficiency = getattr(calibration, _BANDWIDTH_CLASS.get(work.kind, "bandwidth_efficiency"))
    return work.bytes / (device.bandwidth_bytes_s * efficiency) + overhead


def host_seconds(stage: str, work: OpWork, calibration: Calibration, namespace: str) -> float:
    """The CPU time eager PyTorch takes to issue one operator in ``stage``.

    Operators outside ``aten`` and ``memfit`` (``prim::device`` and other metadata queries
    the tracer's fake tensors answer) take none; views and allocations take
    ``host_view_op_s``.
    """
    if namespace not in ("aten", "memfit"):
        return 0.0
    if work.kind == "none":
        return calibration.host_view_op_s
    if stage == "backward":
        return calibration.host_backward_op_s
    if stage.startswith("optimizer") or stage == "zero_grad":
        per_tensor = calibration.host_tensor_s * work.tensors if work.kind == "optimizer" else 0.0
        return calibration.host_optimizer_op_s + per_tensor
    return calibration.host_forward_op_s
