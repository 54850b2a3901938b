"""Gated MLPs: the modules ``FusedGatedMLP`` can change, found by reading their forward.

A module qualifies when its class's forward is exactly ``down(act(gate(x)) * up(x))`` with plain
``nn.Linear`` projections and a SiLU or (tanh or exact) GELU activation: Hugging Face's
LLaMA-style MLPs (LLaMA, Mistral, Qwen2) and memfit's zoo ``SwiGLU``.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Activation", "gated_activation", "is_gated_mlp", "gated_mlps"]

# the forward bodies FusedGatedMLP replaces, whitespace removed (Hugging Face's; memfit's zoo)
_HF_BODIES = (
    "down_proj=self.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))returndown_proj",
    "returnself.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))",
)
_SILU_BODY = "returnself.down_proj(F.silu(self.gate_proj(x))*self.up_proj(x))"
Activation = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[..., torch.Tensor]]


def gated_activation(module: nn.Module) -> Activation | None:
    """The activation's function and ATen backward, for SiLU and GELU modules."""
    body = _forward_body(type(module))
    if body == _SILU_BODY:
        return F.silu, torch.ops.aten.silu_backward
    act = getattr(module, "act_fn", None)
    if body not in _HF_BODIES or act is None:
        return None
    kind = type(act).__name__
    from_transformers = type(act).__module__.startswith("transformers.")
    if isinstance(act, nn.SiLU) or (kind == "SiLUActivation" and from_transformers):
        return F.silu, torch.ops.aten.silu_backward
    approximate = None
    if type(act) is nn.GELU:
        approximate = act.approximate
    elif kind == "GELUTanh" and from_transformers and getattr(act, "act", None) is not None:
        approximate = "tanh" if isinstance(act.act, functools.partial) else None
    if approximate is None:
        return None
    return (
        functools.partial(F.gelu, approximate=approximate),
        functools.partial(torch.ops.aten.gelu_backward, approximate=approximate),
    )


_BODIES: dict[type, str] = {}


def _forward_body(kind: type) -> str:
    """The class's forward after its ``def`` line, comments and whitespace removed."""
    if kind not in _BODIES:
        _BODIES[kind] = _read_body(kind)
    return _BODIES[kind]


def _read_body(kind: Any) -> str:
    try:
        lines = inspect.getsource(kind.forward).splitlines()[1:]
    except (OSError, TypeError):
        return ""
    return re.sub(r"\s+", "", "".join(line.split("#", 1)[0] for line in lines))


def is_gated_mlp(module: nn.Module) -> bool:
    """Whether ``FusedGatedMLP`` can change ``module`` (its forward not replaced yet)."""
    parts = [getattr(module, n, None) for n in ("gate_proj", "up_proj", "down_proj")]
    plain = all(type(p) is nn.Linear for p in parts)
    return plain and "forward" not in module.__dict__ and gated_activation(module) is not None


def gated_mlps(model: nn.Module) -> list[str]:
    """Names of the modules ``FusedGatedMLP`` can change."""
    return [name for name, module in model.named_modules() if name and is_gated_mlp(module)]
