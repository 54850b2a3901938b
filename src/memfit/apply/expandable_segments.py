"""The ExpandableSegments applier: PyTorch's caching allocator set to grow segments in place.

The setting belongs to the process, not the model: the applier turns it on in a process with
CUDA and its undo restores what was set before. On a model the tracer builds (fake tensors) or
in a process without CUDA it changes nothing; the tracer simulates the allocator with the
setting from the plan itself (``memfit.trace.estimate``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from memfit.alloc_conf_text import environment_conf, split_options
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import ExpandableSegments

__all__ = ["apply_expandable_segments", "expandable_segments_on"]

_OPTION = "expandable_segments"


def expandable_segments_on() -> bool:
    """Whether the CUDA caching allocator grows segments in place now: as the allocator itself
    reports where CUDA has started, else as set at run time, else as the environment gave it."""
    reported = _allocator_reports()
    if reported is not None:
        return reported
    get: Callable[[], str] | None = getattr(torch._C, "_accelerator_getAllocatorSettings", None)
    text = (get() if get is not None else "") or environment_conf()[1]
    values = {key: value for _, key, value in split_options(text)}
    return values.get(_OPTION) == "True"


def _allocator_reports() -> bool | None:
    """The setting in the CUDA caching allocator's own snapshot; None before CUDA has started."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    try:
        snapshot = torch.cuda.memory._snapshot()
    except RuntimeError:  # an allocator backend without snapshots (cudaMallocAsync)
        return None
    reported = snapshot.get("allocator_settings", {}).get(_OPTION)
    return None if reported is None else bool(reported)


def _set_settings(options: str) -> None:
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:  # torch < 2.9
        setter = torch.cuda.memory._set_allocator_settings
    setter(options)


def _runs_on_cuda(model: nn.Module) -> bool:
    """A real model (not the tracer's, on fake tensors) in a process that has CUDA: on the GPU
    already or to be moved there after applying."""
    if any(is_fake(t) for t in [*model.parameters(), *model.buffers()]):
        return False
    return torch.cuda.is_available()


@register_applier(ExpandableSegments)
def apply_expandable_segments(
    model: nn.Module, technique: ExpandableSegments, context: ApplyContext
) -> UndoFn:
    """Turn ``expandable_segments`` on where CUDA runs the model, if it is not on already.

    Returns the undo: off again if this applier turned it on, else nothing to do.
    """
    if not _runs_on_cuda(model) or expandable_segments_on():
        return lambda: None
    _set_settings(f"{_OPTION}:True")
    if torch.cuda.is_initialized():  # the setting shapes new segments: let go of cached ones
        torch.cuda.empty_cache()
    if _allocator_reports() is False:
        warnings.warn(
            f"the CUDA caching allocator did not take {_OPTION}:True at run time (torch "
            f"{torch.__version__}), and the plan's memory assumes it; start Python with "
            f"PYTORCH_CUDA_ALLOC_CONF={_OPTION}:True",
            stacklevel=3,
        )
    return lambda: _set_settings(f"{_OPTION}:False")
