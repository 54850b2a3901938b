"""Which techniques can run together, and with which step options (the table's rules).

Each row of ``memfit.techniques.TABLE`` names the techniques it excludes and the step options
it conflicts with (clipping by global norm, gradient accumulation across batches, fp16 loss
scaling). ``memfit.apply``, the tracer and the planner ask here before they change anything, so
that a combination that cannot train the same model is refused with the fix, never run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from memfit.errors import InvalidInputError
from memfit.techniques import MixedPrecision, by_name, info

__all__ = [
    "check_combination",
    "setting_conflicts",
    "check_step_options",
    "allowed_with_options",
]


def check_combination(techniques: Iterable[Any]) -> None:
    """Raise when two techniques that exclude each other (the rows' ``excludes``) meet, or
    when ``MixedPrecision("bf16")`` asks for pure bf16 without ``PureBF16``.

    Raises:
        InvalidInputError: naming both and what each does, and the fix.
    """
    techniques = list(techniques)
    present = {row.name: row for row in (info(t) for t in techniques) if row is not None}
    _check_pure_bf16_by_name(techniques, present)
    for row in present.values():
        for other in row.excludes:
            if other in present:
                raise InvalidInputError(
                    f"{row.name} ({row.summary}) cannot be combined with {other} "
                    f"({present[other].summary}); keep one of them"
                )


def _check_pure_bf16_by_name(techniques: list[Any], present: dict[str, Any]) -> None:
    """``MixedPrecision("bf16")`` alone would run fp32 weights without autocast: casting them is
    ``PureBF16``'s, a technique that changes the math and runs only when named."""
    for technique in techniques:
        if not isinstance(technique, MixedPrecision) or "pure_bf16" in present:
            continue
        precision = technique.precision
        if isinstance(precision, str) and precision.lower().replace("_", "-") == "bf16":
            raise InvalidInputError(
                f"MixedPrecision({precision!r}) is pure bf16: the weights, gradients and "
                f"optimizer state cast to bfloat16, which changes the math. That is the "
                f"PureBF16 technique, used only when named: put PureBF16() in the techniques "
                f"(memfit.plan: allow=[..., 'pure_bf16']; the command line: --allow "
                f"...,pure_bf16), or use MixedPrecision('bf16-mixed') for autocast over the "
                f"float32 weights"
            )


_CONFLICT_FIXES = {
    "clip_grad_norm": "clipping by global norm needs every gradient before the first update",
    "accumulate": "accumulating gradients keeps them over several backward passes",
    "grad_scaler": "fp16 loss scaling unscales and checks every gradient before the update",
}


def setting_conflicts(
    names: Iterable[str],
    *,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    grad_scaler: bool = False,
) -> dict[str, str]:
    """The techniques among ``names`` that cannot run with these step options.

    Returns:
        ``{technique name: why}`` (empty when everything can run).
    """
    given = {
        "clip_grad_norm": clip_grad_norm is not None,
        "accumulate": accumulate > 1,
        "grad_scaler": grad_scaler,
    }
    found = {}
    for name in names:
        clashes = [c for c in by_name(name).conflicts if given.get(c)]
        if clashes:
            found[name] = "; ".join(_CONFLICT_FIXES[c] for c in clashes)
    return found


def check_step_options(
    techniques: Iterable[Any],
    *,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    grad_scaler: bool = False,
) -> None:
    """Raise when a technique cannot run with the step's clipping, accumulation or scaling.

    Raises:
        InvalidInputError: naming the technique, the option's value and the fix.
    """
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise InvalidInputError(f"clip_grad_norm={clip_grad_norm!r} must be a positive number")
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise InvalidInputError(
            f"accumulate={accumulate!r} must be an integer >= 1 (1: step after every batch)"
        )
    names = [row.name for row in (info(t) for t in techniques) if row is not None]
    _refuse(names, clip_grad_norm=clip_grad_norm, accumulate=accumulate, grad_scaler=grad_scaler)


def _refuse(
    names: Iterable[str], *, clip_grad_norm: float | None, accumulate: int, grad_scaler: bool
) -> None:
    conflicts = setting_conflicts(
        names, clip_grad_norm=clip_grad_norm, accumulate=accumulate, grad_scaler=grad_scaler
    )
    given = [
        f"clip_grad_norm={clip_grad_norm}" if clip_grad_norm is not None else "",
        f"accumulate={accumulate}" if accumulate > 1 else "",
        "fp16-mixed precision (its GradScaler)" if grad_scaler else "",
    ]
    options = " and ".join(filter(None, given))
    for name, why in conflicts.items():
        raise InvalidInputError(
            f"{name} cannot run with {options}: {why}. Drop {name} from the plan (plan "
            f"without allowing it), or train without {options}"
        )


def allowed_with_options(
    allow: Sequence[str],
    *,
    named: bool,
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
    grad_scaler: bool = False,
) -> tuple[tuple[str, ...], list[str]]:
    """What the planner may choose given the step's options, and a note for each left out.

    Args:
        allow: technique names (``memfit.techniques.parse_allow``).
        named: whether the user named them (``allow=``); else they are the defaults.

    Returns:
        The names that can run with the options, and the notes for the plan.

    Raises:
        InvalidInputError: a technique the user named cannot run with the options (the
            message names both and the fix).
    """
    check_step_options((), clip_grad_norm=clip_grad_norm, accumulate=accumulate)
    conflicts = setting_conflicts(
        allow, clip_grad_norm=clip_grad_norm, accumulate=accumulate, grad_scaler=grad_scaler
    )
    if named:
        _refuse(
            conflicts, clip_grad_norm=clip_grad_norm, accumulate=accumulate, grad_scaler=grad_scaler
        )
    notes = [f"{name} left out: {why}" for name, why in conflicts.items()]
    return tuple(n for n in allow if n not in conflicts), notes
