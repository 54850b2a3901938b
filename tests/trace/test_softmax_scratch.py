"""The math attention kernel's softmax scratch on CUDA, and attention biases cuDNN cannot train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import UnsupportedModelError
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


class LearnedScores(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.scores, -1).sum() + x.sum()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_softmax_backward_holds_grad_times_output_beside_its_result(precision):
    # CUDA's softmax backward computes grad * output into a temporary of the gradient's size
    # first, freed when the kernel returns
    shape = (4, 8, 128, 128)
    numel = 4 * 8 * 128 * 128
    itemsize = 4 if precision == "fp32" else 2
    profile = memfit.estimate(
        LearnedScores(shape),
        f"{'float32' if precision == 'fp32' else 'bfloat16'}[1]",
        precision=precision,
        device="h200",
        loss_fn=lambda out, batch: out,
        optimizer="sgd",
    )
    scratch = [t for t in profile.alive_at_peak if "grad x output" in t.op]
    assert profile.peak_op.startswith("_softmax_backward_data"), profile.peak_op
    assert [t.num_bytes for t in scratch] == [round_size(numel * itemsize)]


class LearnedBias(nn.Module):
    """Attention with a learned bias added to the scores (T5's relative position bias)."""

    def __init__(self, heads: int = 4, length: int = 64, head_dim: int = 64) -> None:
        super().__init__()
        self.qkv = nn.Linear(head_dim * heads, 3 * head_dim * heads)
        self.bias = nn.Parameter(torch.zeros(1, heads, length, length))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (
            t.view(batch, length, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1)
        )
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.bias)


def test_a_learned_bias_on_cudnn_attention_is_refused_with_the_fix():
    with pytest.raises(UnsupportedModelError, match="enable_cudnn_sdp"):
        memfit.estimate(LearnedBias(), "float32[2,64,256]", precision="bf16-mixed", device="h200")
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        profile = memfit.estimate(
            LearnedBias(), "float32[2,64,256]", precision="bf16-mixed", device="h200"
        )
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
    assert profile.peak_allocated > 0
