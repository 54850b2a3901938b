"""memfit: predict, explain and fit the GPU memory of PyTorch training steps.

Importing memfit has no side effects: it does not import torch or touch CUDA until a function
that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "estimate": "memfit.trace.estimate",
    "measure": "memfit.measure.run",
    "report": "memfit.report",
    "OOMGuard": "memfit.guard",
    "find_batch_size": "memfit.guard",
    "LeakWatch": "memfit.guard",
    "Plan": "memfit.plan.plan",
    "plan": "memfit.plan",
    "apply": "memfit.apply",
    "TrainStep": "memfit.apply",
    "Checkpoint": "memfit.plan.techniques",
    "MicroBatch": "memfit.plan.techniques",
    "MixedPrecision": "memfit.plan.techniques",
    "ChunkedLoss": "memfit.plan.techniques",
    "FusedActivation": "memfit.plan.techniques",
    "FusedGatedMLP": "memfit.plan.techniques",
    "LeanAutocast": "memfit.plan.techniques",
    "FusedOptimizer": "memfit.plan.techniques",
    "MemoryProfile": "memfit.profile",
    "ModuleMemory": "memfit.profile",
    "TimelineEvent": "memfit.profile",
    "Category": "memfit.profile",
    "Phase": "memfit.profile",
    "DeviceSpec": "memfit.devices",
    "get_device": "memfit.devices",
    "MemfitError": "memfit.errors",
    "parse_bytes": "memfit.units",
    "format_bytes": "memfit.units",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memfit' has no attribute {name!r}")
    imported = importlib.import_module(module)
    # memfit.report is a callable package (see memfit/report/__init__.py)
    value = imported if module == f"memfit.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
