"""The LeanAutocast applier: the step keeps no low-precision weight copies for backward.

The technique changes how the step saves tensors, not the model: the applier marks the
``ApplyContext`` and the training step runs forward under ``memfit.step.lean_saving``.
"""

from __future__ import annotations

from torch import nn

from memfit.step.context import ApplyContext, set_once
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import LeanAutocast

__all__ = ["apply_lean_autocast"]


@register_applier(LeanAutocast)
def apply_lean_autocast(model: nn.Module, technique: LeanAutocast, context: ApplyContext) -> UndoFn:
    """Set ``context.lean_autocast``; the training step runs forward under ``lean_saving``.

    Raises:
        InvalidInputError: the plan has LeanAutocast twice.
    """
    return set_once(context, "lean_autocast", "LeanAutocast")
