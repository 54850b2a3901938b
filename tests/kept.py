"""What "the user's model and optimizer are as they were" means, checked field by field."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fingerprint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    buffer_identity: bool = True,
) -> dict:
    """Everything a run may change: tensors' values, dtypes, devices, strides, requires_grad
    and identities (of buffers only with ``buffer_identity``: ``model.to(dtype)`` replaces
    them), gradients, module tree and modes, instance attributes, hooks, optimizer state and
    groups, the CPU generator."""
    tensors = {}
    for name, t in [
        *model.named_parameters(remove_duplicate=False),
        *model.named_buffers(remove_duplicate=False),
    ]:
        grad = getattr(t, "grad", None) if isinstance(t, nn.Parameter) else None
        tensors[name] = (
            id(t) if buffer_identity or isinstance(t, nn.Parameter) else None,
            _tensor(t),
            t.requires_grad,
            None if grad is None else _tensor(grad),
        )
    modules = {
        name: (
            id(m),
            type(m),
            m.training,
            sorted(k for k in vars(m) if not k.startswith("_")),
            [len(getattr(m, h)) for h in _HOOKS],
        )
        for name, m in model.named_modules(remove_duplicate=False)
    }
    return {
        "tensors": tensors,
        "modules": modules,
        "optimizer": _optimizer(optimizer) if optimizer is not None else None,
        "rng": torch.random.get_rng_state().clone(),
    }


_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _tensor(t: torch.Tensor) -> tuple:
    return (t.detach().cpu().clone(), t.dtype, t.device, tuple(t.shape), t.stride())


def _optimizer(optimizer: torch.optim.Optimizer) -> dict:
    state = {
        id(p): {k: _tensor(v) if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for p, s in optimizer.state.items()
    }
    groups = [
        ([id(p) for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
        for g in optimizer.param_groups
    ]
    return {"state": state, "groups": groups}


def assert_same(before: dict, after: dict) -> None:
    """Equal fingerprints (tensor values compared bit for bit, NaNs included)."""
    _compare(before, after, "")


def _compare(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, set(a) ^ set(b))
        for key in a:
            _compare(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, type(a)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _compare(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)
