"""A module's forward replaced by an applier, and the undo that gives the previous one back.

Checkpointing, offloaded activations and fused gated MLPs change how a module runs by giving it
an instance ``forward``: a partial of their function, bound to the module (``copy.deepcopy``
rebinds it to the copy) and named ``forward`` (torch.compile reads the name). Undo restores
what was there before (another library's instance forward, or none: the class's) and refuses
when the forward was replaced again since, leaving the later one alone.
"""

from __future__ import annotations

import functools
import types
import weakref
from typing import Any

from torch import nn

from memfit.errors import MemfitError
from memfit.step.undo import UndoFn

__all__ = ["replace_forward"]


def replace_forward(
    module: nn.Module, function: functools.partial[Any], replaced_message: str
) -> UndoFn:
    """Install ``function(module, *args, **kwargs)`` as ``module.forward``; return its undo.

    Args:
        function: a partial whose next argument is the module.
        replaced_message: the MemfitError undo raises when ``module.forward`` is no longer
            this one (it names the module and the technique).
    """
    had_forward = "forward" in module.__dict__
    previous: Any = module.__dict__.get("forward")
    function.__name__ = function.__qualname__ = "forward"  # type: ignore[attr-defined]
    installed = types.MethodType(function, module)
    module.forward = installed  # type: ignore[method-assign]
    ref = weakref.ref(module)

    def undo() -> None:
        target = ref()
        if target is None:
            return
        if target.__dict__.get("forward") is not installed:
            raise MemfitError(replaced_message)
        if had_forward:
            target.forward = previous  # type: ignore[method-assign]
        else:
            target.__dict__.pop("forward", None)

    return undo
