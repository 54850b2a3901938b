"""Adam and AdamW on the host: float32 masters, gradients and state in host memory.

One parameter's update, as ``HostOptimizer`` runs it in its worker thread: the float32 gradient
(the GPU widens the working copy's gradient before copying it: exact, since the float32
gradient of a weight that autocast casts to bfloat16 is that bfloat16 gradient widened) is added
to the micro-batches accumulated so far, and PyTorch's own fused CPU kernel
(``torch._fused_adamw_`` / ``_fused_adam_``, what ``AdamW(fused=True)`` runs on a CPU) updates
the master, ``exp_avg`` and ``exp_avg_sq`` in one pass. The step is bound by host memory
bandwidth (ZeRO-Offload's observation, Ren et al. 2021, sec. 5.1): one call per parameter,
with nothing else read or written, measured 3.8e9 parameters/s with 15 threads on the H200's
16-core host (bench/results/northstar_probe_h200.json), 25% more than widening bfloat16
gradients on the CPU in cache-sized chunks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from memfit.errors import InvalidInputError

__all__ = ["AdamHyper", "HostParam", "host_adam_step", "accumulate_on_host"]


@dataclass(frozen=True)
class AdamHyper:
    """One parameter group's Adam/AdamW settings, read when the update is queued."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool  # AdamW (True) or Adam with L2 weight decay (False)
    maximize: bool = False

    @classmethod
    def from_group(cls, group: Mapping[str, Any], decoupled: bool) -> AdamHyper:
        """The settings of an ``Adam``/``AdamW`` parameter group.

        Raises:
            InvalidInputError: amsgrad or a differentiable optimizer.
        """
        if group.get("amsgrad"):
            raise InvalidInputError(
                "OffloadOptimizer does not run amsgrad=True; use amsgrad=False or plan without "
                "'offload_optimizer'"
            )
        if group.get("differentiable"):
            raise InvalidInputError(
                "OffloadOptimizer cannot run a differentiable=True optimizer; use "
                "differentiable=False or plan without 'offload_optimizer'"
            )
        lr = group["lr"]
        beta1, beta2 = group["betas"]
        return cls(
            lr=float(lr),
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            decoupled=decoupled,
            maximize=bool(group.get("maximize", False)),
        )


@dataclass
class HostParam:
    """One parameter's host-side state (flat float32 tensors).

    Attributes:
        master: the weights.
        exp_avg, exp_avg_sq: Adam's moments.
        step: the step count, a 0-d float32 tensor (as the fused kernel takes it).
        grad: the gradient of the last backward, copied from the GPU (pinned).
        accumulated: the sum of the earlier micro-batches' gradients, or None.
    """

    master: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: torch.Tensor
    grad: torch.Tensor
    accumulated: torch.Tensor | None = None


def accumulate_on_host(param: HostParam, first: bool) -> None:
    """Add the last gradient to ``param.accumulated``: the first micro-batch starts the sum
    (``accumulated = g``, as autograd sets ``.grad``), the others add (as autograd does)."""
    if param.accumulated is None:
        param.accumulated = torch.empty_like(param.master)
    if first:
        param.accumulated.copy_(param.grad)
    else:
        param.accumulated.add_(param.grad)


def host_adam_step(param: HostParam, hyper: AdamHyper, accumulated: bool) -> None:
    """Update ``param`` with its last gradient (plus the accumulated ones when
    ``accumulated``: the sum ``accumulated + g``, in the order autograd adds)."""
    param.step += 1  # once per step, as torch.optim's fused path does before its kernel
    grad = param.grad
    if accumulated:
        assert param.accumulated is not None
        grad = param.accumulated.add_(grad)
    kernel = torch._fused_adamw_ if hyper.decoupled else torch._fused_adam_
    kernel(
        [param.master],
        [grad],
        [param.exp_avg],
        [param.exp_avg_sq],
        [],
        [param.step],
        lr=hyper.lr,
        beta1=hyper.beta1,
        beta2=hyper.beta2,
        weight_decay=hyper.weight_decay,
        eps=hyper.eps,
        amsgrad=False,
        maximize=hyper.maximize,
    )
