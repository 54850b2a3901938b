"""The model-state techniques on CUDA: identical updates in backward, torchao's state as
predicted (run on the GPU machine)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
from memfit.profile import Category
from memfit.techniques import LowBitOptimizer, OptimizerInBackward
from memfit.trace.estimate import trace_step
from tests.helpers import tiny_gpt2, token_batch


@pytest.mark.gpu
@pytest.mark.parametrize("flags", [dict(foreach=True), dict(fused=True)])
def test_in_backward_is_bitwise_the_plain_step_on_cuda(flags) -> None:
    runs = []
    for plan in ([], [OptimizerInBackward()]):
        model = tiny_gpt2().float().cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **flags)
        step = memfit.apply(plan, model, optimizer)
        batch = {k: v.cuda() for k, v in token_batch().items()}
        for _ in range(3):
            step(batch)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["8bit", "4bit", "fp8"])
def test_torchao_state_takes_the_predicted_memory_on_cuda(kind) -> None:
    pytest.importorskip("torchao.optim")
    predicted = trace_step(
        nn.Linear(1024, 1024, bias=False),
        torch.randn(2, 1024),
        precision="fp32",
        plan=[LowBitOptimizer(kind)],
        loss_fn=lambda out, b: out.mean(),
    ).profile.by_category[Category.OPTIMIZER]
    layer = nn.Linear(1024, 1024, bias=False).cuda()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    memfit.apply([LowBitOptimizer(kind)], layer, optimizer)
    layer.weight.grad = torch.randn_like(layer.weight)
    optimizer.step()  # compiles, creates the state
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    del optimizer.state[layer.weight]["exp_avg"], optimizer.state[layer.weight]["exp_avg_sq"]
    torch.cuda.synchronize()
    assert before - torch.cuda.memory_allocated() == predicted
