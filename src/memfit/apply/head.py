"""The LM head while ChunkedLoss is applied: a stand-in that returns the hidden states.

``HiddenStatesHead`` takes the head's place in the model. It registers the head's own weight and
bias (the same parameter objects, under the same names), so ``state_dict`` keys, parameter
counts, tied embeddings and optimizers built before or after are unchanged, and it returns its
input: the model's "logits" become the hidden states, from which the chunked loss computes the
real logits one slice at a time.
"""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from memfit.errors import InvalidInputError, MemfitError, UnsupportedModelError

__all__ = ["HiddenStatesHead", "find_head", "replace_module"]


class HiddenStatesHead(nn.Module):
    """Stands in for an ``nn.Linear`` LM head and returns its input unchanged.

    Args:
        head: the Linear it replaces; its ``weight`` and ``bias`` are registered here.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.in_features = head.in_features
        self.out_features = head.out_features
        self.weight = head.weight
        self.register_parameter("bias", head.bias)
        self.train(head.training)
        self._last: weakref.ref[torch.Tensor] | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[-1] != self.in_features:
            raise UnsupportedModelError(
                f"the LM head got inputs of width {hidden.shape[-1]}, not {self.in_features}"
            )
        self._last = weakref.ref(hidden)
        return hidden

    def hidden_states_in(self, logits: torch.Tensor, name: str) -> torch.Tensor:
        """The hidden states this head last returned, checked to be the model's ``logits``.

        A model may upcast what the head returned (then the head's own output is used);
        any other change means the loss would be wrong, and is refused.

        Raises:
            UnsupportedModelError: the model did not call the head, or changed its output.
        """
        last = self._last() if self._last is not None else None
        if last is logits:
            return logits
        if (
            last is not None
            and last.shape == logits.shape
            and last.dtype != logits.dtype
            and (_is_fake(logits) or torch.equal(last.to(logits.dtype), logits))
        ):
            return last
        raise UnsupportedModelError(
            f"ChunkedLoss: the model's output logits are not what its head {name!r} returned "
            f"(it did not call the head module, or changed its output: soft-capping, scaling); "
            f"the chunked loss would differ from the model's. Drop ChunkedLoss for this model"
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} (chunked loss)"


def _is_fake(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, FakeTensor)  # values unknown: shapes must do


def find_head(model: nn.Module, name: str) -> nn.Linear:
    """The ``nn.Linear`` named ``name`` in ``model``.

    Raises:
        InvalidInputError: missing (the message lists the model's largest Linear modules), not a
            plain Linear, or already replaced by ChunkedLoss.
    """
    try:
        head = model.get_submodule(name) if name else None
    except AttributeError:
        head = None
    if head is None:
        modules = dict(model.named_modules())
        linears = sorted(
            (n for n, m in modules.items() if isinstance(m, nn.Linear)),
            key=lambda n: -modules[n].weight.numel(),
        )
        close = difflib.get_close_matches(name, list(modules), n=3, cutoff=0.5)
        suggestions = list(dict.fromkeys(close + linears[:3]))
        raise InvalidInputError(
            f"ChunkedLoss(head={name!r}): this {type(model).__name__} has no module of that "
            f"name; set head to the LM head's name, e.g. "
            f"{', '.join(map(repr, suggestions)) or 'none found (the model has no nn.Linear)'}"
        )
    if isinstance(head, HiddenStatesHead):
        raise InvalidInputError(
            f"ChunkedLoss is already applied to {name!r}; keep one ChunkedLoss in the plan, or "
            f"undo the earlier plan first (plan.undo(model))"
        )
    if not isinstance(head, nn.Linear) or type(head).forward is not nn.Linear.forward:
        raise InvalidInputError(
            f"ChunkedLoss(head={name!r}): the module is a {type(head).__name__}, not a plain "
            f"nn.Linear (the chunked loss computes x @ weight.T + bias itself); point head at "
            f"the Linear that produces the logits, or drop ChunkedLoss"
        )
    return head


def replace_module(
    model: nn.Module, name: str, old: nn.Module, new: nn.Module, *, by: str = "ChunkedLoss"
) -> Callable[[], None]:
    """Put ``new`` where ``old`` is (``name``); returns the undo, which puts ``old`` back.

    The undo refers to the parent weakly, so the undo registry does not keep the model alive.
    """
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    assert parent._modules.get(attr) is old
    setattr(parent, attr, new)
    parent_ref = weakref.ref(parent)

    def undo() -> None:
        target = parent_ref()
        if target is None:
            return
        if target._modules.get(attr) is not new:
            raise MemfitError(f"{name!r} was replaced after {by} was applied; memfit left it alone")
        setattr(target, attr, old)

    return undo
