"""What the host optimizer can take (parameters, optimizers, threads), and moving an optimizer's
state for a parameter to the host and back."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.host_adam import AdamHyper, HostParam

__all__ = [
    "default_threads",
    "check_host_optimizer",
    "offloadable_parameters",
    "take_state",
    "restore_state",
]


def default_threads() -> int:
    """The host step's CPU threads: all cores but two (the main thread launches the GPU's
    kernels and autograd's thread runs backward)."""
    return max(1, (os.cpu_count() or 2) - 2)


def check_host_optimizer(optimizer: object) -> None:
    """Raise unless the host can run ``optimizer``'s update (nothing is changed).

    Raises:
        InvalidInputError: not ``torch.optim.Adam``/``AdamW``, or a group with amsgrad or
            differentiable set.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        raise InvalidInputError(
            f"OffloadOptimizer runs torch.optim.Adam and AdamW on the host, not a "
            f"{type(optimizer).__name__}; use one of those or plan without 'offload_optimizer'"
        )
    assert isinstance(optimizer, torch.optim.Optimizer)
    for group in optimizer.param_groups:
        AdamHyper.from_group(group, decoupled=True)


def offloadable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter, list[nn.Module]]]:
    """The parameters the host optimizer can take: float32, trained, owned by ``nn.Linear``
    modules only (a weight shared with an embedding is used outside autocast's cast).

    Returns:
        ``(name, parameter, owning modules)`` in the model's order (its forward order for
        the usual layouts).
    """
    owners: dict[nn.Parameter, list[nn.Module]] = {}
    names: dict[nn.Parameter, str] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for local, param in module._parameters.items():
            if param is None:
                continue
            owners.setdefault(param, []).append(module)
            names.setdefault(param, f"{module_name}.{local}" if module_name else local)
    return [
        (names[p], p, mods)
        for p, mods in owners.items()
        if p.requires_grad
        and p.dtype == torch.float32
        and all(isinstance(m, nn.Linear) for m in mods)
    ]


def take_state(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, host: HostParam
) -> dict[str, Any] | None:
    """Move ``param``'s Adam state (if it has any) into ``host``, out of the optimizer; the
    state as it was, for undo, or None."""
    state = optimizer.state.get(param)
    if not state:
        return None
    saved = dict(state)
    if "exp_avg" in state:
        host.exp_avg.copy_(state["exp_avg"].detach().reshape(-1))
        host.exp_avg_sq.copy_(state["exp_avg_sq"].detach().reshape(-1))
    step = state.get("step")
    if step is not None:
        host.step.fill_(float(step))
    del optimizer.state[param]
    return saved


def restore_state(
    optimizer: torch.optim.Optimizer,
    param: nn.Parameter,
    host: HostParam,
    shape: torch.Size,
    before: dict[str, Any] | None,
) -> bool:
    """Put ``param``'s state back in the optimizer, laid out as torch.optim keeps it (the step
    count where it was, or on the device for fused/capturable groups, else on the CPU), on the
    parameter's device if it fits there; False when the moments stay in host memory."""
    steps = float(host.step)
    if before is None and steps == 0:
        return True  # no state before, no step since
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    old_step = before.get("step") if before else None
    if isinstance(old_step, torch.Tensor):
        step_device = old_step.device
    elif group.get("fused") or group.get("capturable"):
        step_device = param.device
    else:
        step_device = torch.device("cpu")
    moments = {"exp_avg": host.exp_avg.view(shape), "exp_avg_sq": host.exp_avg_sq.view(shape)}
    on_device = True
    try:
        moments = {k: v.to(param.device) for k, v in moments.items()}
    except torch.OutOfMemoryError:
        moments = {k: v.clone() for k, v in moments.items()}  # free of the flat buffers
        on_device = False
    step = torch.tensor(steps, dtype=torch.float32, device=step_device)
    optimizer.state[param] = {"step": step, **moments}
    return on_device
