"""The FusedActivation applier: tanh-GELUs written as chains of operators become one kernel.

Hugging Face's ``gelu_new``, ``gelu_fast`` and ``gelu_accurate`` activations (GPT-2, GPT-J,
CodeGen, ...) compute ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` as eight separate
operators, and autograd keeps several of their full-size intermediates (in float32 under
autocast) for backward: on Hugging Face GPT-2 at batch 8, sequence 1024, these hold 26% of the
step's peak (bench/results/diag_techniques_h200.json). ``nn.GELU(approximate="tanh")`` computes
the same formula in one kernel, keeping only its input. The values agree to float32 rounding
(the operators are evaluated in a different order; ``gelu_fast`` also rounds sqrt(2/pi) to ten
digits), so this technique is exact up to rounding, like recomputation.
"""

from __future__ import annotations

import functools

from torch import nn

from memfit.apply.head import replace_module
from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn, run_in_reverse
from memfit.structure.layers import FUSABLE, fusable_activations, is_fusable_gelu
from memfit.structure.matching import match_modules
from memfit.techniques import FusedActivation

__all__ = ["apply_fused_activation"]


class FusedTanhGELU(nn.GELU):
    """``nn.GELU(approximate="tanh")`` standing in for the activation it replaced."""

    def __init__(self, replaced: nn.Module) -> None:
        super().__init__(approximate="tanh")
        self.replaced = type(replaced).__name__

    def extra_repr(self) -> str:
        return f"approximate='tanh' (fused, was {self.replaced})"


@register_applier(FusedActivation)
def apply_fused_activation(
    model: nn.Module, technique: FusedActivation, context: ApplyContext
) -> UndoFn:
    """Replace each matched activation module by ``FusedTanhGELU``; undo puts it back.

    Raises:
        InvalidInputError: a pattern matches no module, or a matched module is not one of
            ``FUSABLE`` (Hugging Face's elementwise tanh-GELUs).
    """
    matched = match_modules(
        model,
        technique.modules,
        what="FusedActivation",
        hint=lambda: ", ".join(fusable_activations(model)[:3]) or "none in this model",
    )
    wrong = [(name, type(m).__name__) for name, m in matched if not is_fusable_gelu(m)]
    if wrong:
        name, kind = wrong[0]
        raise InvalidInputError(
            f"FusedActivation: {name!r} is a {kind}, not one of Hugging Face's elementwise "
            f"tanh-GELUs ({', '.join(sorted(FUSABLE))}); name only those modules, e.g. "
            f"{', '.join(fusable_activations(model)[:3]) or 'none in this model'}"
        )
    undos = [
        replace_module(model, name, m, FusedTanhGELU(m), by="FusedActivation")
        for name, m in matched
    ]
    return functools.partial(run_in_reverse, undos)
