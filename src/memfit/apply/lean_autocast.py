"""The LeanAutocast applier: the step keeps no low-precision weight copies for backward.

The technique changes how the step saves tensors, not the model: the applier marks the
``ApplyContext`` (the training step runs forward under ``memfit.step.lean_saving``, autocast
without its weight cache) and counts the technique's modules in and out of their forward
(``lean_modules``), where weight casts are stored as recipes.
"""

from __future__ import annotations

from torch import nn

from memfit.step.context import ApplyContext, set_once
from memfit.step.lean_saving import lean_modules
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn, run_in_reverse
from memfit.structure.matching import match_modules
from memfit.techniques import LeanAutocast

__all__ = ["apply_lean_autocast"]


@register_applier(LeanAutocast)
def apply_lean_autocast(model: nn.Module, technique: LeanAutocast, context: ApplyContext) -> UndoFn:
    """Set ``context.lean_autocast`` and make ``technique.modules`` (all of ``model`` when
    empty) lean.

    Raises:
        InvalidInputError: the plan has LeanAutocast twice, or a pattern matches no module.
    """
    if technique.modules:
        matched = match_modules(
            model,
            technique.modules,
            what="LeanAutocast",
            hint=lambda: ", ".join(n for n, _ in list(model.named_children())[:3]) or "none",
        )
        modules = [module for _, module in matched]
    else:
        modules = [model]
    undos = [set_once(context, "lean_autocast", "LeanAutocast"), lean_modules(modules)]
    return lambda: run_in_reverse(undos)
