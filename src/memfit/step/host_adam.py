"""Adam and AdamW on the host: float32 masters and state in host memory, low-precision in and out.

One parameter's update, as ``OffloadOptimizer`` runs it in its worker thread: the gradient
arrives in the working dtype (bfloat16, copied from the GPU), is widened to float32 (exact: the
float32 gradient of a weight that autocast cast to bfloat16 is that bfloat16 gradient widened),
added to the micro-batches accumulated so far, and PyTorch's own fused CPU kernel
(``torch._fused_adamw_`` / ``_fused_adam_``, what ``AdamW(fused=True)`` runs on a CPU) updates
the master, ``exp_avg`` and ``exp_avg_sq``; the new master is rounded back to the working dtype
in place of the gradient, ready to be copied to the GPU.

The work runs in chunks of ``chunk`` elements so that the widened gradient stays in the CPU's
caches between the widening and the update, and the master between the update and the rounding:
each chunk is read from memory once (ZeRO-Offload's CPU-Adam makes the same point: the step is
bound by host memory bandwidth, Ren et al. 2021, sec. 5.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from memfit.errors import InvalidInputError

__all__ = ["AdamHyper", "HostParam", "host_adam_step", "accumulate_on_host", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 1 << 20  # elements: 4 MiB of float32 per chunk and tensor


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
            InvalidInputError: amsgrad, a differentiable optimizer, or a tensor learning rate
                on another device than the CPU (the fused CPU kernel takes a float).
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
    """One parameter's host-side state.

    Attributes:
        master: the float32 weights (flat).
        exp_avg, exp_avg_sq: Adam's moments (flat, float32).
        step: the step count, a 0-d float32 tensor (as the fused kernel takes it).
        staging: pinned, in the working dtype (flat): the gradient arrives here from the GPU
            and the rounded new weights leave from here.
        accumulated: the float32 sum of the earlier micro-batches' gradients, or None.
    """

    master: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: torch.Tensor
    staging: torch.Tensor
    accumulated: torch.Tensor | None = None


def accumulate_on_host(param: HostParam, first: bool, scratch: torch.Tensor, chunk: int) -> None:
    """Add the staged gradient (widened to float32) to ``param.accumulated``.

    ``first`` starts a new sum (``accumulated = g``, as autograd sets ``.grad`` on the first
    backward); later micro-batches add (``accumulated += g``, as autograd accumulates).
    """
    assert param.accumulated is not None
    total = param.master.numel()
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        if first:
            param.accumulated[start:end].copy_(param.staging[start:end])
        else:
            widened = scratch[: end - start]
            widened.copy_(param.staging[start:end])
            param.accumulated[start:end].add_(widened)


def host_adam_step(
    param: HostParam, hyper: AdamHyper, scratch: torch.Tensor, chunk: int, accumulated: bool
) -> None:
    """Update ``param`` with the staged gradient (plus the accumulated ones when
    ``accumulated``), and leave the new weights, rounded, in ``param.staging``.

    Args:
        param: the parameter's host state; ``staging`` holds the last gradient.
        hyper: its group's settings.
        scratch: float32 scratch of at least ``chunk`` elements.
        chunk: elements per chunk.
        accumulated: ``param.accumulated`` holds the earlier micro-batches' sum.
    """
    param.step += 1  # once per parameter, as torch.optim's fused path increments before the kernel
    kernel = torch._fused_adamw_ if hyper.decoupled else torch._fused_adam_
    total = param.master.numel()
    for start in range(0, total, chunk):
        end = min(total, start + chunk)
        grad = scratch[: end - start]
        grad.copy_(param.staging[start:end])
        if accumulated:
            assert param.accumulated is not None
            grad = param.accumulated[start:end].add_(grad)
        master = param.master[start:end]
        kernel(
            [master],
            [grad],
            [param.exp_avg[start:end]],
            [param.exp_avg_sq[start:end]],
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
        param.staging[start:end].copy_(master)
