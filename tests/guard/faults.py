"""A fake device for CPU tests: it 'runs out of memory' when a micro-batch is too large.

``Budget.limit`` is the largest ``samples x tokens`` a micro-batch may hold; the model raises
``torch.OutOfMemoryError`` (with a real-looking CUDA message) in the place ``Budget.where`` names:
"forward" or "backward". ``TransientStepFaults`` makes ``optimizer.step()`` fail now and then.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of "
    "which 1.50 GiB is free. Including non-PyTorch memory, this process has 77.58 GiB memory in "
    "use. Of the allocated memory 75.20 GiB is allocated by PyTorch, and 1.10 GiB is reserved by "
    "PyTorch but unallocated."
)


@dataclass
class Budget:
    limit: float = float("inf")
    where: str = "forward"
    last_load: int = 0
    raised: int = 0
    log: list[tuple[str, int]] = field(default_factory=list)

    def check(self, where: str, load: int) -> None:
        if where == self.where and load > self.limit:
            self.raised += 1
            self.log.append((where, load))
            raise torch.OutOfMemoryError(MESSAGE)


class _BackwardProbe(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, budget, load):  # type: ignore[override]
        ctx.budget, ctx.load = budget, load
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        ctx.budget.check("backward", ctx.load)
        return grad, None, None


class FaultyNet(nn.Module):
    """Mean-pooled two-layer MLP over ``x: [N, T, d]``; 'memory' of a micro-batch = N * T."""

    def __init__(self, budget: Budget, d: int = 6, hidden: int = 10, out: int = 3) -> None:
        super().__init__()
        self.budget = budget
        self.l1 = nn.Linear(d, hidden)
        self.l2 = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        load = x.shape[0] * x.shape[1]
        self.budget.last_load = load
        self.budget.check("forward", load)
        h = torch.tanh(self.l1(x))
        h = _BackwardProbe.apply(h, self.budget, load)
        return self.l2(h.mean(dim=1))


def make_data(steps: int, *, seed: int = 0, sizes=(16, 12, 7), lengths=(4, 6)):
    """Batches ``{"x": [N, T, 6], "y": [N, 3]}`` with varying N and T (float64)."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    batches = []
    for _ in range(steps):
        n, t = rng.choice(sizes), rng.choice(lengths)
        x = torch.randn(n, t, 6, generator=gen, dtype=torch.float64)
        y = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        batches.append({"x": x, "y": y, "tag": "train"})
    return batches


def make_model(budget: Budget, *, seed: int = 0) -> FaultyNet:
    torch.manual_seed(seed)
    return FaultyNet(budget).double()


def random_limits(steps: int, *, seed: int = 1, every: int = 7) -> dict[int, float]:
    """Limit changes at random steps: from 'everything fits' down to one sample of 6 tokens."""
    rng = random.Random(seed)
    choices = [float("inf"), 100, 48, 30, 20, 12, 6]
    return {s: rng.choice(choices) for s in range(steps) if rng.random() < 1 / every}


@dataclass
class TransientStepFaults:
    """``optimizer.step()`` runs out of memory once in each of the chosen training steps.

    ``step`` is the training step under way (set by the caller); the fault fires on the first
    ``optimizer.step()`` of that step only, as memory held for a moment elsewhere would.
    """

    steps: set[int]
    step: int = -1
    raised: int = 0
    _fired: set[int] = field(default_factory=set)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        def pre_hook(opt, args, kwargs):  # noqa: ARG001
            if self.step in self.steps and self.step not in self._fired:
                self._fired.add(self.step)
                self.raised += 1
                raise torch.OutOfMemoryError(MESSAGE)

        optimizer.register_step_pre_hook(pre_hook)


def moving_limits(steps: int, *, seed: int, every: int = 10) -> dict[int, tuple[float, str]]:
    """A new (limit, where) every ``every`` steps: where is "forward" or "backward"."""
    rng = random.Random(seed)
    choices = [float("inf"), 100, 48, 30, 20, 12, 6]
    return {
        s: (rng.choice(choices), rng.choice(("forward", "backward")))
        for s in range(0, steps, every)
    }
