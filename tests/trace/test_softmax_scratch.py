"""Scratch memory of the math attention kernel's softmax (``_safe_softmax``) on CUDA."""

from __future__ import annotations

import torch
from torch import nn

import memfit
from memfit.trace.allocator import round_size


class SafeSoftmax(nn.Module):
    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._safe_softmax(scores, -1)


def test_safe_softmax_holds_its_masks_beside_its_output():
    # the scores (the batch), the output, and, until it returns, a byte per element (the -inf
    # mask) and a byte per row (the fully-masked rows)
    batch, heads, length = 8, 4, 256
    numel = batch * heads * length * length
    profile = memfit.estimate(
        SafeSoftmax(),
        f"float32[{batch},{heads},{length},{length}]",
        precision="fp32",
        device="h200",
        mode="inference",
    )
    rows = numel // length
    assert profile.peak_allocated == 2 * round_size(numel * 4) + round_size(numel) + round_size(
        rows
    )
