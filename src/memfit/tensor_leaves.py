"""The tensors inside an operator's arguments or result, found without ``tree_flatten``.

The tracer looks at every operator's arguments and outputs, several times per operator, and
torch's pytree walk is a large share of that time. ATen passes tensors alone or in tuples,
lists and dicts, which are walked directly here; any other container goes through the pytree,
so the result is always the tensors among ``tree_flatten``'s leaves, in its order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_flatten

__all__ = ["tensors_in"]

# leaves that hold no tensor: the scalar and metadata arguments of ATen operators
_ATOMS = frozenset(
    {
        int,
        float,
        bool,
        str,
        complex,
        type(None),
        torch.dtype,
        torch.device,
        torch.layout,
        torch.memory_format,
    }
)


def tensors_in(tree: Any) -> list[torch.Tensor]:
    """The tensors in ``tree`` (a tensor, or nested tuples, lists and dicts), in pytree order."""
    found: list[torch.Tensor] = []
    _collect(tree, found)
    return found


def _collect(tree: Any, found: list[torch.Tensor]) -> None:
    if isinstance(tree, torch.Tensor):
        found.append(tree)
        return
    kind = type(tree)
    if kind is tuple or kind is list:
        for item in tree:
            _collect(item, found)
    elif kind is dict:
        for item in tree.values():
            _collect(item, found)
    elif kind not in _ATOMS:  # named tuples, registered containers, symbolic values
        found.extend(t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor))
