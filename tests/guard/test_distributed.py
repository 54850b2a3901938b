"""Two CPU ranks on gloo: only rank 0 runs out of memory, both stay in step and match."""

from __future__ import annotations

import gc
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from memfit.guard import OOMGuard, OOMUnrecoverableError, PeerAbortError

from .faults import Budget, make_data, make_model, random_limits

STEPS = 60


def _train_ddp(rank: int, guarded: bool):
    budget = Budget()
    model = make_model(budget)
    ddp = DDP(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=0.01)

    def step_fn(batch):
        opt.zero_grad()
        loss = F.mse_loss(ddp(batch["x"]), batch["y"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)
        opt.step()

    guard = OOMGuard(step_fn, optimizer=opt, model=ddp, grow_after=4)
    limits = random_limits(STEPS, seed=11, every=4) if rank == 0 else {}
    for i, batch in enumerate(make_data(STEPS, seed=100 + rank)):
        budget.limit = limits.get(i, budget.limit) if guarded else float("inf")
        (guard if guarded else step_fn)(batch)
    return model, guard, budget


class _SyncStep:
    """A MicroBatchStep whose optimizer_step averages gradients over ranks."""

    def __init__(self, budget: Budget) -> None:
        self.model = make_model(budget)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)

    def forward_backward(self, batch, *, loss_scale: float):
        loss = F.mse_loss(self.model(batch["x"]), batch["y"])
        (loss * loss_scale).backward()
        return loss.detach()

    def optimizer_step(self) -> None:
        for p in self.model.parameters():
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())
        self.optimizer.step()
        self.optimizer.zero_grad()


def _train_protocol(rank: int, guarded: bool):
    budget = Budget()
    step = _SyncStep(budget)
    guard = OOMGuard(step, grow_after=4)
    limits = random_limits(STEPS, seed=12, every=4) if rank == 0 else {}
    for i, batch in enumerate(make_data(STEPS, seed=200 + rank)):
        budget.limit = limits.get(i, budget.limit) if guarded else float("inf")
        if guarded:
            guard(batch)
        else:
            step.forward_backward(batch, loss_scale=1.0)
            step.optimizer_step()
    return step.model, guard, budget


def _hopeless(rank: int) -> None:
    """Rank 0 cannot fit even one sample: it raises, and rank 1 stops too instead of hanging."""
    budget = Budget(limit=1 if rank == 0 else float("inf"))
    step = _SyncStep(budget)
    guard = OOMGuard(step)
    expected = OOMUnrecoverableError if rank == 0 else PeerAbortError
    with pytest.raises(expected):
        guard(make_data(1, seed=rank)[0])


def _worker(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        for train in (_train_ddp, _train_protocol):
            ref, _, _ = train(rank, guarded=False)
            got, guard, budget = train(rank, guarded=True)
            for p, q in zip(ref.parameters(), got.parameters(), strict=True):
                torch.testing.assert_close(q, p, rtol=0, atol=1e-12)
            if rank == 0:
                assert budget.raised > 3 and guard.metrics.ooms == budget.raised
            else:
                assert guard.metrics.ooms == 0 and guard.metrics.peer_waits > 3
            flat = torch.cat([p.detach().reshape(-1) for p in got.parameters()])
            other = flat.clone()
            dist.broadcast(other, src=0)
            torch.testing.assert_close(flat, other, rtol=0, atol=0)  # ranks in step
        _hopeless(rank)
        gc.collect()  # DDP reducers go before the process group does
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_agree_before_retrying() -> None:
    mp.spawn(_worker, args=(_free_port(),), nprocs=2, join=True)
