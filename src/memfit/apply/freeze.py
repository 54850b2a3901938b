"""The Freeze applier: the named modules' parameters stop training.

Each parameter of a matched module (its submodules' included) gets ``requires_grad=False``:
autograd computes no gradient for it, and optimizers skip parameters whose gradient is None,
so no optimizer state is created for it either. Undo sets ``requires_grad=True`` again on
exactly the parameters it froze. A model the user froze already (LoRA, peft) needs no Freeze:
the tracer counts gradients and optimizer state for trainable parameters only.
"""

from __future__ import annotations

from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.structure.matching import match_modules
from memfit.techniques import Freeze

__all__ = ["apply_freeze"]


@register_applier(Freeze)
def apply_freeze(model: nn.Module, technique: Freeze, context: ApplyContext) -> UndoFn:
    """Set ``requires_grad=False`` on every parameter of the modules matching the patterns.

    Known limitations:
        * A parameter shared with a module that is not frozen (tied embeddings) is frozen
          there too: it is one tensor.
        * Optimizer state that already exists for a frozen parameter stays allocated.
        * Modules built or called under ``torch.no_grad`` are unaffected either way.

    Raises:
        InvalidInputError: no pattern given, a pattern matching no module, or modules
            whose parameters are all frozen already (nothing would change).
    """
    patterns = tuple(technique.modules)
    if not patterns or isinstance(technique.modules, str):
        raise InvalidInputError(
            f"Freeze(modules={technique.modules!r}) needs a tuple of module name patterns, "
            f"e.g. Freeze(modules=('embed_tokens', 'layers.0'))"
        )
    matched = match_modules(model, patterns, what="Freeze", hint=lambda: _examples(model))
    frozen = []
    seen: set[int] = set()
    for _, module in matched:
        for param in module.parameters():
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                frozen.append(param)
    if not frozen:
        raise InvalidInputError(
            f"Freeze{patterns}: the matched modules have no trainable parameters (frozen "
            f"already, or none); drop Freeze from the plan"
        )
    for param in frozen:
        param.requires_grad_(False)

    def undo() -> None:
        for param in frozen:
            param.requires_grad_(True)

    return undo


def _examples(model: nn.Module) -> str:
    names = [n for n, m in model.named_children() if next(m.parameters(), None) is not None]
    return ", ".join(repr(n) for n in names[:5]) or "a module that has parameters"
