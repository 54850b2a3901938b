"""Reduction scratch against per-operator measurements on an H200 (bench/results)."""

from __future__ import annotations

import pytest
import torch

from memfit.devices import get_device
from memfit.trace.cuda.reductions import reduction_scratch

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
