"""The OffloadOptimizer applier: Adam/AdamW's masters and state in host memory.

The applier changes no module itself: it adds an optimizer change, run once the optimizer is
known (``memfit.apply`` on the user's, the tracer on the one it builds), which picks the
parameters then (after every other technique has changed the model: a chunked loss's head is
no longer an ``nn.Linear`` and stays on the GPU) and attaches a ``HostOptimizer``. Undo
detaches it: float32 weights back on their device, state back in the optimizer.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.host_optimizer import HostOptimizer
from memfit.step.host_params import check_host_optimizer, offloadable_parameters
from memfit.step.precision import Precision
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.structure.matching import name_matches
from memfit.techniques import OffloadOptimizer

__all__ = ["apply_offload_optimizer", "chosen_parameters", "WORKING_DTYPES"]

WORKING_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_PRECISION_DTYPE = {"bf16-mixed": "bfloat16", "fp32": "float32"}


def chosen_parameters(model: nn.Module, modules: tuple[str, ...]) -> list[tuple[str, nn.Parameter]]:
    """The offloadable parameters whose owning modules match ``modules``, in model order."""
    chosen = []
    for name, param, _ in offloadable_parameters(model):
        owner = name.rpartition(".")[0]
        if owner and any(name_matches(owner, pattern) for pattern in modules):
            chosen.append((name, param))
    return chosen


def _validate(technique: OffloadOptimizer, context: ApplyContext) -> torch.dtype:
    if technique.dtype not in WORKING_DTYPES:
        raise InvalidInputError(
            f"OffloadOptimizer(dtype={technique.dtype!r}): the GPU's working dtype must be one "
            f"of {', '.join(WORKING_DTYPES)} (bfloat16 for bf16-mixed precision, float32 "
            f"without autocast)"
        )
    threads = technique.threads
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise InvalidInputError(f"OffloadOptimizer(threads={threads!r}) must be an int or None")
    if threads is not None and threads < 1:
        raise InvalidInputError(f"OffloadOptimizer(threads={threads}) must be at least 1")
    if not technique.modules or not all(isinstance(m, str) for m in technique.modules):
        raise InvalidInputError(
            f"OffloadOptimizer(modules={technique.modules!r}) must be a non-empty tuple of module "
            f"name patterns, e.g. ('**',) for every Linear"
        )
    if context.step_precision is not None:
        precision = Precision.parse(context.step_precision).name
        expected = _PRECISION_DTYPE.get(precision)
        if expected is None:
            raise InvalidInputError(
                f"OffloadOptimizer runs with bf16-mixed or fp32 precision, not {precision}; "
                f"use one of those or plan without 'offload_optimizer'"
            )
        if expected != technique.dtype:
            raise InvalidInputError(
                f"OffloadOptimizer(dtype={technique.dtype!r}) does not match the step's "
                f"{precision} precision, which needs dtype={expected!r}; re-plan for this "
                f"precision"
            )
    if context.host_optimizer is not None or any(
        getattr(change, "offload_optimizer", False) for change in context.optimizer_changes
    ):
        raise InvalidInputError("the plan has OffloadOptimizer twice; keep one")
    return WORKING_DTYPES[technique.dtype]


@register_applier(OffloadOptimizer, check_optimizer=check_host_optimizer)
def apply_offload_optimizer(
    model: nn.Module, technique: OffloadOptimizer, context: ApplyContext
) -> UndoFn:
    """Add the host optimizer's attachment to the context's optimizer changes.

    Known limitations:
        - Adam and AdamW only (not amsgrad, not differentiable), one CUDA device, bf16-mixed
          or fp32 precision (not fp16 loss scaling).
        - No gradient clipping by global norm: updates start before backward ends.
        - An offloaded weight must be used only inside its own modules' forward (a use
          elsewhere raises at the first step).
        - While applied, ``model.state_dict()`` and ``optimizer.state_dict()`` hold the float32
          masters and Adam's state from host memory (as host tensors, not on the GPU), and
          ``load_state_dict`` of either writes into them; ``model.load_state_dict(...,
          assign=True)`` is refused (undo, load, apply again).
        - Not for ``OOMGuard``: a retried slice would step the weights again.

    Raises:
        InvalidInputError: malformed settings, a dtype that does not match the step's
            precision, or the technique twice.
    """
    dtype = _validate(technique, context)
    model_ref = weakref.ref(model)

    def change(optimizer: torch.optim.Optimizer) -> UndoFn:
        model_now = model_ref()
        assert model_now is not None
        chosen = chosen_parameters(model_now, technique.modules)
        if not chosen:
            raise InvalidInputError(
                f"OffloadOptimizer(modules={technique.modules!r}): no trained float32 nn.Linear "
                f"parameter of this {type(model_now).__name__} matches; name modules that hold "
                f"Linear layers"
            )
        engine = HostOptimizer(
            model_now, optimizer, chosen, working_dtype=dtype, threads=technique.threads
        )
        engine.attach()
        context.host_optimizer = engine
        context.host_memory.append(engine.host_bytes)
        return functools.partial(_undo, context, engine)

    change.offload_optimizer = True  # type: ignore[attr-defined]
    context.optimizer_changes.append(change)
    return functools.partial(context.optimizer_changes.remove, change)


def _undo(context: ApplyContext, engine: HostOptimizer) -> None:
    context.host_optimizer = None
    if engine.host_bytes in context.host_memory:
        context.host_memory.remove(engine.host_bytes)
    engine.detach()
