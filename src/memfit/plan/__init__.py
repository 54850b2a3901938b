"""Plans: ``plan = memfit.plan(model, batch, budget="16GiB")`` picks techniques for a budget.

The package is callable (``memfit.verbs``): ``memfit.plan(...)`` is ``memfit.plan.search.plan``.
The technique classes are those of ``memfit.techniques``, here for convenience. Names are
imported on first use, so that importing the package imports no torch.
"""

from __future__ import annotations

from memfit.techniques import TABLE
from memfit.verbs import make_callable

_EXPORTS = {
    "PlanSettings": "memfit.plan.settings",
    "Plan": "memfit.plan.plan",
    "FrontierPoint": "memfit.plan.frontier",
    "pareto": "memfit.plan.frontier",
    "model_fingerprint": "memfit.techniques",
    **{row.type.__name__: "memfit.techniques" for row in TABLE},
}
__all__ = sorted(_EXPORTS)

make_callable(__name__, "memfit.plan.search:plan", _EXPORTS)
