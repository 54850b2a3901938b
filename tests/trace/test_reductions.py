"""Reduction scratch against per-operator measurements on an H200 (bench/results)."""

from __future__ import annotations

import pytest
import torch

from memfit.devices import get_device
from memfit.trace.cuda.reductions import in_memory_order, reduction_scratch

H200 = get_device("h200")


@pytest.mark.parametrize(
    ("rows", "width", "measured"),
    [
        # bias gradients: sum over 8192 tokens (GPT-2 bs 8 x 1024) and 12608 (ViT bs 64 x 197);
        # measured = peak - after inside aten.sum, the buffer plus a 512-byte semaphore block
        (8192, 768, 50_332_160),
        (8192, 3072, 138_412_544),
        (8192, 2304, 139_198_976),
        (12608, 768, 77_464_064),
    ],
)
def test_bias_gradient_buffers_match_the_h200(rows, width, measured):
    scratch = reduction_scratch((rows, width), (0,), torch.bfloat16, H200)
    assert scratch.buffer_bytes + 512 == measured


def test_small_and_inner_reductions_need_no_buffer():
    assert reduction_scratch((64, 768), (0,), torch.float32, H200).buffer_bytes == 0
    # reducing the contiguous dimension into many outputs: each warp handles its own rows
    assert reduction_scratch((8192, 768), (1,), torch.float32, H200).buffer_bytes == 0


def test_fewer_multiprocessors_mean_a_smaller_buffer():
    l4 = get_device("l4")  # 58 SMs
    big = reduction_scratch((8192, 3072), (0,), torch.float32, H200).buffer_bytes
    small = reduction_scratch((8192, 3072), (0,), torch.float32, l4).buffer_bytes
    assert 0 < small < big


# ConvNeXt-nano fp32, batch 64, channels-last (bench/results/snapshots/
# timm-convnext-nano-fp32_steps_snapshot_h200.pickle.gz): the buffer and semaphore bytes each
# sum over (0, 2, 3) allocated: layer-scale gradients and the convolutions' bias gradients
CHANNELS_LAST_SUMS = [
    ((64, 2560, 7, 7), 64225280, 80),
    ((64, 320, 14, 14), 32112640, 12),
    ((64, 1280, 14, 14), 128450560, 40),
    ((64, 160, 28, 28), 64225280, 8),
    ((64, 640, 28, 28), 138608640, 20),
    ((64, 80, 56, 56), 21626880, 8),
    ((64, 320, 56, 56), 115343360, 12),
]


@pytest.mark.parametrize(("shape", "buffer", "semaphores"), CHANNELS_LAST_SUMS)
def test_channels_last_sums_are_outer_reductions(shape, buffer, semaphores):
    tensor = torch.empty(shape, device="meta").contiguous(memory_format=torch.channels_last)
    order, dims = in_memory_order(tuple(tensor.shape), tuple(tensor.stride()), (0, 2, 3))
    assert order == (shape[0], shape[2], shape[3], shape[1]) and dims == (0, 1, 2)
    scratch = reduction_scratch(order, dims, torch.float32, H200)
    assert (scratch.buffer_bytes, scratch.semaphore_bytes) == (buffer, semaphores)


def test_a_contiguous_tensor_keeps_its_order():
    tensor = torch.empty(64, 80, 56, 56, device="meta")
    assert in_memory_order(tuple(tensor.shape), tuple(tensor.stride()), (0, 2, 3)) == (
        (64, 80, 56, 56),
        (0, 2, 3),
    )
