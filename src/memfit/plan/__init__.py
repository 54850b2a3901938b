"""Plans: ``plan = memfit.plan(model, batch, budget="16GiB")`` picks techniques for a budget.

Names are imported on first use: the tracer imports ``memfit.plan.cost`` and the planner
imports the tracer, so importing everything here would be circular.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_EXPORTS = {
    "plan": "memfit.plan.search",
    "Plan": "memfit.plan.plan",
    "model_fingerprint": "memfit.plan.plan",
    "Checkpoint": "memfit.plan.techniques",
    "MicroBatch": "memfit.plan.techniques",
    "MixedPrecision": "memfit.plan.techniques",
    "ChunkedLoss": "memfit.plan.techniques",
    "FusedActivation": "memfit.plan.techniques",
    "FusedGatedMLP": "memfit.plan.techniques",
    "LeanAutocast": "memfit.plan.techniques",
}
__all__ = sorted(_EXPORTS)


# Note: [callable package] see memfit.report: ``memfit.plan(...)`` is this package, callable.
class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from memfit.plan.search import plan

        return plan(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'memfit.plan' has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)


sys.modules[__name__].__class__ = _CallablePackage
