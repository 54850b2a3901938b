"""Plans: ``plan = memfit.plan(model, batch, budget="16GiB")`` picks techniques for a budget.

The package is callable (``memfit.verbs``): ``memfit.plan(...)`` is ``memfit.plan.search.plan``.
The technique classes are those of ``memfit.techniques``, here for convenience.
"""

from __future__ import annotations

from memfit.plan.frontier import FrontierPoint, pareto  # noqa: F401
from memfit.plan.plan import Plan  # noqa: F401
from memfit.plan.search import plan
from memfit.techniques import TABLE, model_fingerprint  # noqa: F401
from memfit.verbs import make_callable

globals().update({row.type.__name__: row.type for row in TABLE})

__all__ = sorted(
    ["plan", "Plan", "FrontierPoint", "pareto", "model_fingerprint"]
    + [row.type.__name__ for row in TABLE]
)

make_callable(__name__, plan)
