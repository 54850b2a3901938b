"""The OffloadActivations applier: what chosen modules save for backward, in host memory.

Each matched module gets an instance ``forward`` that runs its current forward (the class's,
or the checkpointed one ``Checkpoint`` installed) under the ``ActivationOffloader``'s
saved-tensor hooks. Listed after ``Checkpoint`` in a plan, the hooks sit outside the
checkpoint's own, so they see exactly the inputs the checkpoint keeps. Undo puts the previous
forward back.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from memfit.apply.forward_patch import replace_forward
from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.context import ApplyContext
from memfit.step.host_activations import ActivationOffloader
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn, run_in_reverse
from memfit.structure.blocks import find_blocks
from memfit.structure.matching import match_modules
from memfit.techniques import OffloadActivations

__all__ = ["apply_offload_activations"]


@register_applier(OffloadActivations)
def apply_offload_activations(
    model: nn.Module, technique: OffloadActivations, context: ApplyContext
) -> UndoFn:
    """Keep what the matched modules save for backward in (pinned) host memory.

    Known limitations:
        - List it after the ``Checkpoint`` of the same modules: a checkpoint installed over it
          would run the hooks inside its region (detected at the first forward: it raises).
        - Only saved tensors that own their whole storage and have at least ``min_bytes`` move;
          views into larger tensors stay on the GPU.
        - In ``eval()`` or under ``torch.no_grad()`` the plain forward runs (nothing is saved).
        - A module called several times per step is offloaded on every call, but prefetched
          by its position in the model only.

    Raises:
        InvalidInputError: malformed settings, or a pattern that matches no module.
    """
    for field, value in (("ahead", technique.ahead), ("min_bytes", technique.min_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInputError(
                f"OffloadActivations({field}={value!r}) must be an integer >= 0"
            )
    if not technique.modules:
        raise InvalidInputError(
            "OffloadActivations(modules=()) names no module; pass the checkpointed blocks, e.g. "
            + _hint(model)
        )
    matched = match_modules(
        model, technique.modules, what="OffloadActivations", hint=lambda: _hint(model)
    )
    offloader = ActivationOffloader(ahead=technique.ahead, min_bytes=technique.min_bytes)
    undos = [_wrap(module, name, offloader, index) for index, (name, module) in enumerate(matched)]

    def host_bytes(micro_batches: int) -> dict[str, int]:
        return {"offloaded activations": offloader.host_peak}

    context.host_memory.append(host_bytes)

    def undo() -> None:
        context.host_memory.remove(host_bytes)
        run_in_reverse(undos)
        offloader.close()

    return undo


def _hint(model: nn.Module) -> str:
    blocks = find_blocks(model)
    return f"{blocks[0]!r}" if blocks else "'layers.*'"


def _offloaded_forward(
    offloader: ActivationOffloader,
    index: int,
    name: str,
    previous: Callable[..., Any] | None,
    module: nn.Module,
    *args: Any,
    **kwargs: Any,
) -> Any:
    forward = previous if previous is not None else types.MethodType(type(module).forward, module)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    mine = module.__dict__.get("forward")
    if getattr(getattr(mine, "__func__", None), "offloader", None) is not offloader:
        raise UnsupportedModelError(
            f"the forward of {name!r} was wrapped after OffloadActivations (a Checkpoint listed "
            f"after it?), so its saved tensors would be moved inside the checkpoint; list "
            f"OffloadActivations after the Checkpoint of the same modules"
        )
    offloader.enter(index)
    output: Any = None
    try:
        with torch.autograd.graph.saved_tensors_hooks(offloader.pack, offloader.unpack):
            output = forward(*args, **kwargs)
    finally:
        offloader.leave(output, index)
    return output


def _wrap(module: nn.Module, name: str, offloader: ActivationOffloader, index: int) -> UndoFn:
    previous: Any = module.__dict__.get("forward")
    bound = functools.partial(_offloaded_forward, offloader, index, name, previous)
    bound.offloader = offloader  # type: ignore[attr-defined]
    return replace_forward(
        module,
        bound,
        f"the forward of {name!r} was replaced after memfit offloaded its activations; "
        f"memfit left it alone",
    )
