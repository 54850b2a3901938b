"""nn.Transformer's fused inference operators and models built by deep-copying a layer."""

from __future__ import annotations

import copy

import torch
from torch import nn

import memfit
from memfit.trace.allocator import round_size
from memfit.trace.cuda.stack import DEFAULT_STACK

F32 = 4
WORKSPACES = DEFAULT_STACK.cublas_workspace_bytes + DEFAULT_STACK.cublaslt_workspace_bytes
BATCH, LENGTH, WIDTH = 2, 64, 64  # one activation: 32 KiB, a multiple of the allocator's rounding
UNIT = BATCH * LENGTH * WIDTH * F32


def _encoder(layers: int, norm_first: bool = True) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        WIDTH, 4, 4 * WIDTH, dropout=0.1, batch_first=True, norm_first=norm_first
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def _param_bytes(model: nn.Module) -> int:
    return sum(round_size(p.numel() * F32) for p in model.parameters())


def test_the_encoder_layer_fast_path_allocates_what_the_cuda_kernel_does():
    # transformer_encoder_layer_forward on CUDA (fp32, no mask: the fused SDPA route): the
    # norm's output, the packed QKV projection (3 units), the attention output and the output
    # projection live together; then the projection, the second norm, the feed-forward hidden
    # layer (4 units) and its output: 7 activations above the layer's input at the peak. The
    # fake operator alone made only its output.
    model = _encoder(1)
    profile = memfit.estimate(
        lambda: _encoder(1),
        f"float32[{BATCH},{LENGTH},{WIDTH}]",
        precision="fp32",
        device="h200",
        mode="inference",
    )
    expected = _param_bytes(model) + WORKSPACES + UNIT + 7 * UNIT
    mean_and_rstd = 2 * 2 * round_size(BATCH * LENGTH * F32)  # two norms' statistics, at most
    assert expected <= profile.peak_allocated <= expected + mean_and_rstd


def test_multi_head_attention_fast_path_runs_the_cuda_kernels_operators():
    attention = nn.MultiheadAttention(WIDTH, 4, batch_first=True)
    x = torch.randn(BATCH, LENGTH, WIDTH)

    def forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model(batch, batch, batch, need_weights=False)[0]

    profile = memfit.estimate(
        attention, x, forward=forward, precision="fp32", device="h200", mode="inference"
    )
    # the packed projection (3 units), attention's output and the output projection
    expected = _param_bytes(attention) + WORKSPACES + UNIT + 5 * UNIT
    assert expected <= profile.peak_allocated <= expected + 2 * round_size(BATCH * LENGTH * F32)


def test_a_model_built_from_deep_copies_holds_its_weights_once():
    # copies made by deepcopy under fake mode carry a fake mode of their own; the model memfit
    # built takes memfit's fakes for good, so the copies are not kept beside them
    def build() -> nn.Module:
        layer = nn.Linear(256, 256)
        return nn.Sequential(*(copy.deepcopy(layer) for _ in range(4)))

    built = memfit.estimate(build, "float32[8,256]", precision="fp32", mode="inference")
    given = memfit.estimate(build(), "float32[8,256]", precision="fp32", mode="inference")
    assert built.peak_allocated == given.peak_allocated
    training = memfit.estimate(build, "float32[8,256]", precision="fp32")
    assert training.by_category[memfit.Category.PARAM] == _param_bytes(build())


def test_under_autocast_modules_see_cuda_autocast_enabled_as_on_the_gpu():
    # nn.TransformerEncoderLayer and nn.MultiheadAttention leave their fast path when
    # torch.is_autocast_enabled() (CUDA's); the emulated autocast must report itself there
    seen: list[tuple[bool, torch.dtype]] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append((torch.is_autocast_enabled(), torch.get_autocast_dtype("cuda")))
            return x * 2

    memfit.estimate(Probe(), "float32[4,8]", precision="bf16-mixed", mode="inference")
    assert seen == [(True, torch.bfloat16)]
    assert not torch.is_autocast_enabled() and torch.get_autocast_dtype("cuda") == torch.float16


def test_under_autocast_the_encoder_runs_its_python_layers():
    traced = memfit.trace.estimate.trace_step(
        lambda: _encoder(1),
        f"float32[{BATCH},{LENGTH},{WIDTH}]",
        precision="bf16-mixed",
        device="h200",
        mode="inference",
    )
    ops = {allocation.op for allocation in traced.trace.allocations.values()}
    assert "_addmm_activation" not in ops  # the fused kernel's feed-forward epilogue
    assert "gelu" in ops or "relu" in ops
