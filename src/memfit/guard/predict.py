"""A first guess of the largest batch from memfit's estimator (fake tensors, no memory).

Optional by design: any failure (a model the estimator cannot trace, no GPU to read the budget
from) gives None, logged in one line, so the search starts from 1 instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from memfit.devices import DEFAULT_DEVICE
from memfit.trace.estimate import estimate

__all__ = ["estimate_largest_batch", "usable_bytes"]

log = logging.getLogger("memfit.guard")

# two batch sizes far enough apart that allocator rounding does not dominate the slope
_SMALL, _LARGE = 1, 8


def usable_bytes(device: torch.device) -> int:
    """Memory this process may still fill on ``device``: free plus its own cache, under the cap
    of ``torch.cuda.set_per_process_memory_fraction`` when one is set."""
    free, total = torch.cuda.mem_get_info(device)
    usable = free + torch.cuda.memory_reserved(device)
    get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    if get_fraction is not None:
        usable = min(usable, int(total * get_fraction(device)))
    return usable


def _optimizer_arg(optimizer: torch.optim.Optimizer | None) -> Any:
    if optimizer is None:
        return None
    fused = bool(optimizer.defaults.get("fused"))
    names = {torch.optim.AdamW: "adamw", torch.optim.Adam: "adam", torch.optim.SGD: "sgd"}
    name = names.get(type(optimizer))
    if name is not None:
        return f"{name}-fused" if fused and name != "sgd" else name
    kind, defaults = type(optimizer), dict(optimizer.defaults)
    return lambda params: kind(params, **defaults)


def estimate_largest_batch(
    model: nn.Module,
    make_batch: Callable[[int], Any],
    optimizer: torch.optim.Optimizer | None,
    estimate_kwargs: Mapping[str, Any] | None = None,
    budget_bytes: int | None = None,
) -> int | None:
    """Largest batch whose predicted ``peak_reserved`` fits, from two estimates; None if unknown.

    Reserved memory is taken as linear in the batch size (true of activations; parameters,
    gradients and optimizer state do not depend on it): ``peak(b) = fixed + b * per_sample``.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        if budget_bytes is None:
            if device.type != "cuda":
                log.info("memfit.guard: model is not on a GPU; no estimated batch size")
                return None
            budget_bytes = usable_bytes(device)
        kwargs = {"precision": "fp32", **(estimate_kwargs or {})}
        kwargs.setdefault("device", "cuda" if device.type == "cuda" else DEFAULT_DEVICE)
        peaks = []
        for size in (_SMALL, _LARGE):
            profile = estimate(
                model,
                lambda size=size: make_batch(size),
                optimizer=_optimizer_arg(optimizer),
                **kwargs,
            )
            peaks.append(int(profile.peak_reserved))
    except Exception as exc:  # the guess is optional: any failure means "no guess"
        log.info("memfit.guard: no estimate of the batch size (%s: %s)", type(exc).__name__, exc)
        return None
    per_sample = (peaks[1] - peaks[0]) / (_LARGE - _SMALL)
    if per_sample <= 0:
        return None
    fixed = peaks[0] - per_sample * _SMALL
    guess = int((budget_bytes - fixed) // per_sample)
    log.info("memfit.guard: the estimator predicts batch size %d fits", guess)
    return guess if guess >= 1 else None
