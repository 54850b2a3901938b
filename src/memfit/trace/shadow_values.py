"""Real values of small tensors computed beside their fakes, for the branches models take on them.

Fake tensors have no values, so ``if tensor:`` needs an answer from somewhere. Many such reads
are of small tensors the model computes from nothing it was given: Hugging Face's encoder-
decoders (BART, Whisper, mBART...) draw ``torch.rand([])`` and skip the layer when it is below
``layerdrop``, which is 0 when training them. Assuming True there skips every layer: BART-base
was predicted at less than its own weights and optimizer state. ``ShadowValues`` computes, for
every operator whose outputs are small (``SMALL`` elements) and whose tensor inputs all have real
values, the same operator on those real values (on the CPU, outside the fake mode), and keeps the
result beside the fake output; a read of such a tensor gets its real value. Random operators
draw from a generator seeded with 0 (``torch.rand([])`` is then 0.496), so that predictions do
not vary from run to run, and a layer dropped with probability below one half is kept.

Known limitations:
    * Values derived from the batch or the weights (both fake) stay unknown; reads of those are
      still assumed (and reported in the profile's warnings).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["ShadowValues", "SMALL"]

SMALL = 64  # elements: scalars, shapes, a few flags; never activations


def _is_random(func: Any) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(func, "tags", ())


class ShadowValues:
    """Real values of the small tensors an operator sequence computes from constants."""

    def __init__(self) -> None:
        self._values: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def scalar(self, tensor: torch.Tensor) -> bool | int | float | None:
        """The real value of a one-element ``tensor`` (what ``.item()`` returns), or None."""
        real = self._values.get(tensor)
        if real is None:
            return None
        with _disable_current_modes():
            return real.item()

    def follow(self, func: Any, args: tuple, kwargs: dict, outputs: list[Any]) -> None:
        """After ``func`` ran on fakes (``outputs``: its flattened result): run it on the real
        values too, if they are all known."""
        tensors = [t for t in outputs if isinstance(t, torch.Tensor)]
        if not tensors or any(t.numel() > SMALL for t in tensors):
            return
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if any(t not in self._values for t in inputs):
            return
        real_args, real_kwargs = tree_map(
            lambda t: self._values[t] if isinstance(t, torch.Tensor) else t, (args, kwargs)
        )
        try:
            with _disable_current_modes():
                if _is_random(func):
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(0)
                        real = func(*real_args, **real_kwargs)
                else:
                    real = func(*real_args, **real_kwargs)
        except Exception:  # an operator that needs what fakes stood for: no value, as before
            return
        for fake, value in zip(outputs, tree_flatten(real)[0], strict=False):
            if isinstance(fake, torch.Tensor) and isinstance(value, torch.Tensor):
                self._values[fake] = value
