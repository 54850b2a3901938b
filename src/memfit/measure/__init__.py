"""Real measurement on the local GPU: ``memfit.measure(model, batch)`` (same schema as estimate),
and the microbenchmarks of ``memfit calibrate``.

The package is callable (``memfit.verbs``): ``memfit.measure(...)`` is
``memfit.measure.run.measure``.
"""

from __future__ import annotations

from memfit.verbs import make_callable

__all__ = ["measure"]

make_callable(__name__, "memfit.measure.run:measure", {"measure": "memfit.measure.run"})
