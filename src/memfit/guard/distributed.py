"""Ranks agree before anyone retries; DDP gradients are reduced after they agree.

Note: [one vote per round] Every rank casts exactly one vote per round: ``True`` when its
attempt ran out of memory, ``False`` once its micro-batches are done. A rank that is done keeps
its gradients and votes ``False`` again each round until nobody failed; a failing rank restores
its state, retries with smaller micro-batches and votes again. The votes are one all-reduce
(MAX) of a one-element tensor, so the rounds line up across ranks whatever each one does between
votes, as long as nothing else between two votes is a collective. That is why the guard runs a
DDP model's micro-batches under ``no_sync()`` and reduces the gradients itself after the vote.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from memfit.errors import MemfitError

__all__ = ["Voter", "PeerAbortError", "all_reduce_gradients", "is_distributed", "FAILED", "ABORT"]

FAILED, ABORT = 1, 2  # votes: 0 done, 1 ran out of memory (will retry), 2 gave up (raises)


class PeerAbortError(MemfitError):
    """Another rank could not recover (or raised), so this rank stops too instead of hanging."""


_BUCKET_BYTES = 64 * 1024**2


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class Voter:
    """All-reduce (MAX) of an out-of-memory flag over the default process group."""

    def __init__(self) -> None:
        backend = dist.get_backend()
        if backend == "nccl" and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        self._flag = torch.zeros(1, dtype=torch.int32, device=device)
        self.rank = dist.get_rank()
        self.votes = 0

    def vote(self, value: int) -> int:
        """Cast this rank's vote (0, ``FAILED`` or ``ABORT``); return the largest vote cast."""
        self._flag.fill_(value)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        self.votes += 1
        return int(self._flag.item())


def _buckets(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if buckets[-1] and size + nbytes > _BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(t)
        size += nbytes
    return [b for b in buckets if b]


def all_reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average ``param.grad`` over ranks, as DDP does, in buckets of at most 64 MiB.

    Every rank must hold a gradient for the same parameters (None elsewhere).
    """
    world = dist.get_world_size()
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is not None:
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
    for tensors in groups.values():
        for bucket in _buckets(tensors):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            flat.div_(world)
            offset = 0
            for t in bucket:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
