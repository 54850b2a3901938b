"""memfit: predict, explain and fit the GPU memory of PyTorch training steps.

Importing memfit has no side effects: it does not import torch or touch CUDA until a function
that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

from memfit.techniques import TABLE  # plain data: imports no torch

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "estimate": "memfit.trace.estimate",
    "measure": "memfit.measure",
    "report": "memfit.report",
    "OOMGuard": "memfit.guard",
    "find_batch_size": "memfit.guard",
    "LeakWatch": "memfit.guard",
    "Plan": "memfit.plan.plan",
    "plan": "memfit.plan",
    "apply": "memfit.apply",
    "undo": "memfit.step.undo",
    "TrainStep": "memfit.step.train_step",
    "CausalLMLoss": "memfit.step.causal_lm_loss",
    "MemoryProfile": "memfit.profile",
    "ModuleMemory": "memfit.profile",
    "TimelineEvent": "memfit.profile",
    "Category": "memfit.profile",
    "Phase": "memfit.profile",
    "DeviceSpec": "memfit.devices",
    "get_device": "memfit.devices",
    "CudaStack": "memfit.trace.cuda.stack",
    "stack_for": "memfit.trace.cuda.stack",
    "MemfitError": "memfit.errors",
    "parse_bytes": "memfit.units",
    "format_bytes": "memfit.units",
}
_EXPORTS.update({row.type.__name__: "memfit.techniques" for row in TABLE})

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memfit' has no attribute {name!r}")
    imported = importlib.import_module(module)
    # memfit.plan, memfit.apply and memfit.report are callable packages (memfit.verbs)
    value = imported if module == f"memfit.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
