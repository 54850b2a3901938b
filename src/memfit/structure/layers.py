"""Layers the planner and the appliers look for: fusable activations, batch statistics."""

from __future__ import annotations

from torch import nn

__all__ = ["FUSABLE", "is_fusable_gelu", "fusable_activations", "batch_statistics"]

FUSABLE = frozenset({"NewGELUActivation", "FastGELUActivation", "AccurateGELUActivation"})
"""Hugging Face activation classes that compute the tanh approximation of GELU elementwise."""


def is_fusable_gelu(module: nn.Module) -> bool:
    """Whether ``module`` is one of Hugging Face's elementwise tanh-GELUs (``FUSABLE``)."""
    kind = type(module)
    return kind.__name__ in FUSABLE and kind.__module__.startswith("transformers.")


def fusable_activations(model: nn.Module) -> list[str]:
    """Names of the modules ``FusedActivation`` can replace."""
    return [name for name, module in model.named_modules() if name and is_fusable_gelu(module)]


def batch_statistics(model: nn.Module) -> list[str]:
    """Modules that normalise with the statistics of the whole batch (BatchNorm in training
    mode): with them, micro-batches compute another function than the batch."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
    ]
