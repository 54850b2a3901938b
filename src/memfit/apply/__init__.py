"""Apply a plan: ``step = memfit.apply(plan, model, optimizer)``; ``step.undo()`` (or
``memfit.undo(model)``, or ``plan.undo(model)``) reverts it, for a plan or a list of techniques.

Each technique has one applier, registered by type (``register_applier``); ``apply`` runs them
all or none, and returns a ``TrainStep`` that runs forward, backward and the optimizer step with
the plan in force.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.in_force import check_fingerprint, techniques_in_force
from memfit.step.precision import Precision, check_weights_for
from memfit.step.registry import apply_techniques, known_techniques, register_applier
from memfit.step.train_step import TrainStep
from memfit.step.undo import applied, undo_all
from memfit.technique_rules import check_combination, check_step_options
from memfit.techniques import PureBF16
from memfit.verbs import make_callable

__all__ = [
    "apply",
    "TrainStep",
    "ApplyContext",
    "register_applier",
    "apply_techniques",
    "known_techniques",
    "undo_all",
    "applied",
]


def apply(
    plan: Any,
    model: Any,
    optimizer: Any = None,
    *,
    loss_fn: Any = None,
    forward: Any = None,
    precision: str | None = None,
    device_type: str | None = None,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
) -> TrainStep:
    """Change ``model`` as ``plan`` says and return the step that runs it.

    Args:
        plan: a ``memfit.Plan`` (from ``memfit.plan``) or a sequence of techniques.
        model: the ``nn.Module`` the plan was made for (changed in place; ``step.undo()``, or
            ``memfit.undo(model)``, restores it exactly).
        optimizer: its optimizer, or None for forward and backward only. A plan with
            ``FusedOptimizer`` switches it to its fused kernel (Adam and AdamW only) until
            ``plan.undo(model)``.
        loss_fn, forward: as for ``memfit.estimate``.
        precision: overrides the precision the plan was made for.
        device_type: the device autocast runs for; None (the default): the device of the
            model's parameters. A model on the CPU runs CPU autocast in the plan's precision
            (bf16-mixed computes its matrix products in bfloat16 there too).
        clip_grad_norm: clip the gradients to this global L2 norm before each update.
        accumulate: update after every ``accumulate`` batches (``step(batch)`` calls), the
            losses scaled by ``1 / accumulate``.

    Returns:
        A ``TrainStep``: ``loss = step(batch)``.

    Raises:
        InvalidInputError: the plan was made for another model, a technique is malformed,
            ``precision`` is unknown, or the plan has ``FusedOptimizer`` and the optimizer is
            not Adam/AdamW, or memfit's techniques are already applied to the model (undo them
            first); a technique that cannot run with ``clip_grad_norm``, ``accumulate`` or fp16
            loss scaling (``OptimizerInBackward``, ``OffloadOptimizer``); the model is unchanged.
        MemfitError: an applier failed; nothing was applied and the model is unchanged
            (except with ``Sharding``, which cannot be undone: a failure inside
            ``fully_shard`` leaves the model partly sharded, and every rank of the job raises
            ``ShardingError``).
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(
            f"model {model!r} is a {type(model).__name__}, not an nn.Module: memfit.apply "
            f"changes your model object in place, memfit.apply(plan, model, optimizer); to "
            f"predict a zoo model, use memfit.estimate({model!r}, plan=...)"
        )
    in_force = techniques_in_force(plan)
    profile = getattr(plan, "profile", None)
    planned = precision or in_force.precision or (profile.precision if profile else None)
    context = ApplyContext(loss_fn=loss_fn, step_precision=planned or "fp32")

    def checked_and_applied() -> None:
        check_fingerprint(in_force.fingerprint, model)
        if applied(model):
            raise InvalidInputError(
                f"memfit's techniques are already applied to this {type(model).__name__} (by "
                f"an earlier memfit.apply); undo them first with step.undo() or "
                f"memfit.undo(model), then apply the plan you want"
            )
        if precision is not None:
            Precision.parse(precision)
        # checked before the model is changed: the precision, and what the techniques exclude
        check_combination(in_force.techniques)
        if precision not in (None, "bf16") and any(
            isinstance(t, PureBF16) for t in in_force.techniques
        ):
            raise InvalidInputError(
                f"precision={precision!r}: the plan keeps the weights in bf16 (PureBF16), "
                f"which runs without autocast; pass precision='bf16' or none"
            )
        if not any(isinstance(t, PureBF16) for t in in_force.techniques):
            check_weights_for(model, Precision.parse(planned or "fp32"))
        check_step_options(
            in_force.techniques,
            clip_grad_norm=clip_grad_norm,
            accumulate=accumulate,
            grad_scaler=Precision.parse(planned or "fp32").grad_scaler,
        )
        apply_techniques(model, in_force.in_order, context=context, optimizer=optimizer)

    if in_force.sharding is None:
        checked_and_applied()
    else:  # a rank that fails a check still casts its votes: the others do not wait
        _apply_on_every_rank(model, context, checked_and_applied)
    # the argument overrides the plan: its MixedPrecision, else the precision it was made for
    chosen = precision or context.precision or ("bf16" if context.pure_bf16 else None)
    if chosen is None and profile is not None:
        chosen = profile.precision
    return TrainStep(
        model,
        optimizer,
        loss_fn=context.loss_fn,
        forward=forward,
        precision=chosen or "fp32",
        micro_batches=context.micro_batches or 1,
        device_type=device_type,
        forward_batch=context.forward_batch,
        lean_autocast=context.lean_autocast,
        recompute_products=context.recompute_products,
        host_optimizer=context.host_optimizer,
        clip_grad_norm=clip_grad_norm,
        accumulate=accumulate,
        optimizer_in_backward=context.optimizer_in_backward,
    )


def _apply_on_every_rank(model: Any, context: ApplyContext, run: Callable[[], None]) -> None:
    """Apply a sharded plan; every rank of the job raises if any rank failed (no hang)."""
    # not at the top: importing FSDP2 costs half a second that plans without it never need
    from memfit.apply.sharding import Agreement, in_a_job

    context.agreement = Agreement(active=in_a_job(model))
    try:
        run()
    except BaseException as error:
        context.agreement.finish(error)
        raise
    context.agreement.finish(None)


make_callable(__name__, apply)
