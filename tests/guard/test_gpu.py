"""A real CUDA out-of-memory error under a memory cap (skipped without a GPU)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from memfit.guard import LeakWatch, OOMGuard, find_batch_size

pytestmark = pytest.mark.gpu
MiB = 1024**2


@contextlib.contextmanager
def capped(total_bytes: int):
    torch.cuda.empty_cache()
    fraction = total_bytes / torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)).cuda()


def _step(model, opt):
    def step_fn(batch):
        loss = model(batch["x"]).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return step_fn


def test_real_oom_is_recovered_and_matches_a_split_run() -> None:
    batch = {"x": torch.randn(4096, 1024, device="cuda")}  # activations ~ 4096 x 4096 x 4 x 3
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = OOMGuard(_step(model, opt), optimizer=opt, model=model)
    torch.cuda.synchronize()
    with capped(torch.cuda.memory_allocated() + 160 * MiB):
        guard(batch)
    assert guard.metrics.ooms >= 1 and guard.metrics.last_oom is not None
    assert guard.metrics.last_oom.requested_bytes is not None
    m = guard.metrics.micro_batch_size
    assert m is not None and m < 4096

    ref = _model()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.01)
    for part in batch["x"].split(m):
        (ref(part).pow(2).mean() * (part.shape[0] / 4096)).backward()
    ref_opt.step()
    for p, q in zip(ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_find_batch_size_under_a_cap() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.cuda.synchronize()
    with capped(torch.cuda.memory_allocated() + 256 * MiB):
        result = find_batch_size(
            model,
            lambda b: {"x": torch.randn(b, 1024, device="cuda")},
            optimizer=opt,
            step_fn=_step(model, opt),
            use_estimate=False,
            start=64,
        )
    assert 64 <= result.batch_size < 16384 and result.smallest_failing is not None


def test_leak_watch_on_cuda_memory() -> None:
    model = _model()
    watch = LeakWatch(warmup=1, patience=3, min_growth_bytes=MiB)
    total = 0.0
    for _ in range(8):
        with watch.step():
            total = total + model(torch.randn(256, 1024, device="cuda")).mean()
    assert watch.reports and watch.reports[0].culprits[0].device == "cuda:0"
