"""THE technique table: what a plan can do to a training step, and what each technique is.

Each technique is a frozen dataclass (its settings) and one ``TechniqueInfo`` row in ``TABLE``:
its name (for ``--allow``, ``allow=`` and a plan's JSON), whether it keeps the math exactly or
changes it (allowed only on request), what it cannot be combined with, and the module holding
its applier. Everything else reads this table: the planner (what it may choose), the tracer
(what it can predict), ``memfit.apply`` (which applier runs), the command line and
``memfit.__init__`` (what is public). Adding a technique is one dataclass (in
``memfit.technique_settings``, re-exported here) and one row here, one applier in
``memfit.apply`` (registered with ``memfit.apply.register_applier``), and what the tracer and
the cost model must know of it.

Patterns name modules by their fully qualified name with shell wildcards (``fnmatch``):
``"layers.*"`` is every direct child of ``layers``.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from memfit.errors import InvalidInputError
from memfit.technique_settings import (
    LOW_BIT_KINDS,
    SELECTIVE_SAVE_DEFAULT,
    Checkpoint,
    ChunkedLoss,
    ExpandableSegments,
    Freeze,
    FusedActivation,
    FusedGatedMLP,
    FusedOptimizer,
    LeanAutocast,
    LowBitOptimizer,
    MicroBatch,
    MixedPrecision,
    OffloadActivations,
    OffloadOptimizer,
    OptimizerInBackward,
    PureBF16,
    Sharding,
    Technique,
)

if TYPE_CHECKING:  # the table is read without importing torch (the command line's help)
    from torch import nn

__all__ = [
    "TABLE",
    "TechniqueInfo",
    "Exactness",
    "info",
    "by_name",
    "parse_allow",
    "default_allow",
    "technique_label",
    "model_fingerprint",
    "PlanLike",
    "Checkpoint",
    "MicroBatch",
    "MixedPrecision",
    "ChunkedLoss",
    "FusedActivation",
    "FusedGatedMLP",
    "LeanAutocast",
    "FusedOptimizer",
    "ExpandableSegments",
    "OffloadOptimizer",
    "OffloadActivations",
    "OptimizerInBackward",
    "LowBitOptimizer",
    "PureBF16",
    "Freeze",
    "LOW_BIT_KINDS",
    "Sharding",
    "Technique",
    "SELECTIVE_SAVE_DEFAULT",
]


class Exactness(enum.Enum):
    """How close the step with a technique is to the step without it."""

    IDENTICAL = "identical"  # bit-identical gradients and updates
    ROUNDING = "rounding"  # the same function, equal to floating-point rounding
    CHANGES_MATH = "changes the math"  # trains another model: only when allowed by name


@dataclass(frozen=True)
class TechniqueInfo:
    """One row of the technique table.

    Attributes:
        type: the technique's dataclass.
        name: its name for ``--allow`` / ``allow=`` and in a plan's JSON.
        exactness: what it keeps of the step's math; the planner chooses a technique that
            ``CHANGES_MATH`` only when the user allows it by name.
        planned: whether ``memfit.plan`` chooses it (``MixedPrecision`` is the user's choice,
            never the planner's).
        applier: the module of ``memfit.apply`` that registers its applier; imported the first
            time a technique of this type is applied, by the tracer or by ``memfit.apply``.
        excludes: names of techniques it cannot be combined with.
        conflicts: the step options it cannot run with (``StepOptions`` fields:
            ``"clip_grad_norm"``, ``"accumulate"``, ``"grad_scaler"``).
        summary: one line for ``memfit plan --help`` and the guide.
    """

    type: type
    name: str
    exactness: Exactness
    planned: bool
    applier: str
    label: Any  # (technique) -> str: how plans and reports name it
    excludes: tuple[str, ...] = ()
    summary: str = ""
    conflicts: tuple[str, ...] = ()


def _compact(patterns: Sequence[str]) -> str:
    if len(patterns) <= 3:
        return ",".join(patterns)
    return f"{patterns[0]}..{patterns[-1]} ({len(patterns)} modules)"


def _sharding_label(t: Sharding) -> str:
    kind = f"HSDP {t.replicate}x{t.shards}" if t.replicate > 1 else f"FSDP2 x{t.gpus}"
    extras = [f"{len(t.units)} unit patterns" if len(t.units) > 3 else ",".join(t.units)]
    if t.keep_unsharded:
        extras.append(f"gathered through backward: {_compact(t.keep_unsharded)}")
    if t.param_dtype or t.reduce_dtype:
        extras.append(f"gather {t.param_dtype or 'as is'}, reduce {t.reduce_dtype or 'as is'}")
    if t.offload:
        extras.append("CPU offload")
    return f"{kind} ({'; '.join(e for e in extras if e) or 'root only'})"


def _checkpoint_label(t: Checkpoint) -> str:
    return f"checkpoint[{'selective' if t.selective else 'full'}] {_compact(t.modules)}"


def _chunked_label(t: ChunkedLoss) -> str:
    variant = [
        *(["unshifted"] if not t.shift else []),
        *([f"smoothing {t.label_smoothing:g}"] if t.label_smoothing else []),
        *([f"z-loss {t.z_loss:g}"] if t.z_loss else []),
        *(["sum"] if t.reduction != "mean" else []),
    ]
    return f"chunked loss x{t.chunks}" + (f" ({', '.join(variant)})" if variant else "")


TABLE: tuple[TechniqueInfo, ...] = (
    TechniqueInfo(
        MixedPrecision, "mixed_precision", Exactness.CHANGES_MATH, planned=False,
        applier="memfit.apply.step_options",
        label=lambda t: t.precision, summary="run the step in another precision",
    ),
    TechniqueInfo(
        FusedOptimizer, "fused_optimizer", Exactness.ROUNDING, planned=True,
        applier="memfit.apply.fused_optimizer",
        label=lambda t: "fused optimizer step",
        summary="Adam/AdamW's fused kernel where its step holds less",
    ),
    TechniqueInfo(
        FusedActivation, "fused_activation", Exactness.ROUNDING, planned=True,
        applier="memfit.apply.fused_activation",
        label=lambda t: f"fused GELU {_compact(t.modules)}",
        summary="Hugging Face's elementwise tanh-GELUs as one kernel",
    ),
    TechniqueInfo(
        Checkpoint, "checkpoint", Exactness.IDENTICAL, planned=True,
        applier="memfit.apply.checkpoint", label=_checkpoint_label,
        summary="recompute blocks (or all but their matrix products) in backward",
    ),
    TechniqueInfo(
        FusedGatedMLP, "fused_gated_mlp", Exactness.IDENTICAL, planned=True,
        applier="memfit.apply.fused_gated_mlp",
        label=lambda t: f"fused gated MLP {_compact(t.modules)}",
        summary="keep a gated MLP's factors, recompute its product",
    ),
    TechniqueInfo(
        LeanAutocast, "lean_autocast", Exactness.IDENTICAL, planned=True,
        applier="memfit.apply.lean_autocast",
        label=lambda t: "lean autocast" + (f" {_compact(t.modules)}" if t.modules else ""),
        summary="keep no low-precision weight copies from forward to backward",
    ),
    TechniqueInfo(
        ChunkedLoss, "chunked_loss", Exactness.ROUNDING, planned=True,
        applier="memfit.apply.chunked_loss",
        label=_chunked_label,
        summary="LM head and cross-entropy over slices of the sequence",
    ),
    TechniqueInfo(
        MicroBatch, "micro_batch", Exactness.ROUNDING, planned=True,
        applier="memfit.apply.step_options",
        label=lambda t: f"micro-batch x{t.n}",
        summary="split the batch and accumulate gradients",
        excludes=("optimizer_in_backward",),
    ),
    TechniqueInfo(
        OptimizerInBackward, "optimizer_in_backward", Exactness.IDENTICAL, planned=True,
        applier="memfit.apply.optimizer_in_backward",
        label=lambda t: "optimizer in backward",
        summary="update each parameter in backward and free its gradient",
        excludes=("micro_batch",), conflicts=("clip_grad_norm", "accumulate", "grad_scaler"),
    ),
    TechniqueInfo(
        LowBitOptimizer, "low_bit_optimizer", Exactness.CHANGES_MATH, planned=True,
        applier="memfit.apply.low_bit_optimizer",
        label=lambda t: f"{t.kind} optimizer state",
        summary="Adam/AdamW moments block-wise quantized (torchao)",
        excludes=("fused_optimizer",),
    ),
    TechniqueInfo(
        PureBF16, "pure_bf16", Exactness.CHANGES_MATH, planned=True,
        applier="memfit.apply.pure_bf16",
        label=lambda t: "pure bf16" + (" (stochastic rounding)" if t.stochastic_round else ""),
        summary="bf16 weights, gradients and optimizer state",
    ),
    TechniqueInfo(
        Freeze, "freeze", Exactness.CHANGES_MATH, planned=False,
        applier="memfit.apply.freeze",
        label=lambda t: f"freeze {_compact(t.modules)}",
        summary="no gradients and no optimizer state for the named modules",
    ),
    TechniqueInfo(
        OffloadActivations, "offload_activations", Exactness.IDENTICAL, planned=True,
        applier="memfit.apply.offload_activations",
        label=lambda t: f"activations to host {_compact(t.modules)}",
        summary="keep checkpoint boundaries in host memory, prefetched in backward",
    ),
    TechniqueInfo(
        OffloadOptimizer, "offload_optimizer", Exactness.ROUNDING, planned=True,
        applier="memfit.apply.offload_optimizer",
        label=lambda t: "optimizer on host" + (
            f" {_compact(t.modules)}" if t.modules != ("**",) else ""
        ),
        summary="fp32 masters and Adam state in host memory, stepped on the CPU in backward",
        excludes=("optimizer_in_backward", "low_bit_optimizer", "pure_bf16"),
        conflicts=("clip_grad_norm", "accumulate", "grad_scaler"),
    ),
    TechniqueInfo(
        ExpandableSegments, "expandable_segments", Exactness.IDENTICAL, planned=True,
        applier="memfit.apply.expandable_segments", label=lambda t: "expandable segments",
        summary="the CUDA caching allocator grows segments in place: less fragmentation",
        excludes=("sharding",),
    ),
    TechniqueInfo(
        Sharding, "sharding", Exactness.ROUNDING, planned=True,
        applier="memfit.apply.sharding", label=_sharding_label,
        summary="FSDP2: weights, gradients and optimizer state divided over the GPUs",
    ),
)  # fmt: skip

_BY_TYPE = {row.type: row for row in TABLE}
_BY_NAME = {row.name: row for row in TABLE}


def info(technique: Any) -> TechniqueInfo | None:
    """The table's row for a technique (or its type); None for a type the table lacks."""
    kind = technique if isinstance(technique, type) else type(technique)
    return _BY_TYPE.get(kind)


def by_name(name: str) -> TechniqueInfo:
    """The row named ``name``.

    Raises:
        InvalidInputError: an unknown name; the message lists the known ones.
    """
    row = _BY_NAME.get(name)
    if row is None:
        raise InvalidInputError(f"unknown technique {name!r}; known: {', '.join(_BY_NAME)}")
    return row


def default_allow() -> tuple[str, ...]:
    """What the planner may choose unless told otherwise: the exact techniques it plans."""
    return tuple(r.name for r in TABLE if r.planned and r.exactness is not Exactness.CHANGES_MATH)


def parse_allow(allow: str | Iterable[str] | None) -> tuple[str, ...]:
    """``allow=`` as the planner takes it: None for the default, one name, or several.

    Naming only techniques that change the math (``--allow low_bit_optimizer``) allows them
    on top of the default exact ones; to restrict the planner, name the exact ones too.

    Raises:
        InvalidInputError: a name the table lacks, or one the planner never chooses.
    """
    if allow is None:
        return default_allow()
    planned = [r.name for r in TABLE if r.planned]
    if not isinstance(allow, (str, list, tuple, set, frozenset)) or not all(
        isinstance(name, str) for name in ([allow] if isinstance(allow, str) else allow)
    ):
        raise InvalidInputError(
            f"allow={allow!r} must be a technique name or a list of them, e.g. "
            f"allow='checkpoint' or allow=['checkpoint', 'micro_batch']; the planner chooses "
            f"from: {', '.join(planned)}"
        )
    names = [allow] if isinstance(allow, str) else list(allow)
    names = [n.strip() for name in names for n in name.split(",") if n.strip()]
    if not names:
        raise InvalidInputError(
            f"allow={allow!r} names no technique; name at least one of {', '.join(planned)}, "
            f"or leave allow out for the default ({', '.join(default_allow())})"
        )
    unknown = [n for n in names if n not in planned]
    if unknown:
        raise InvalidInputError(
            f"unknown technique(s) {unknown} in allow; the planner chooses from: "
            f"{', '.join(planned)}"
        )
    if names and all(_BY_NAME[n].exactness is Exactness.CHANGES_MATH for n in names):
        names = list(default_allow()) + names
    return tuple(dict.fromkeys(names))


def technique_label(technique: Any) -> str:
    """How plans, reports and the command line name a technique."""
    row = info(technique)
    return row.label(technique) if row is not None else repr(technique)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the parameters' names and shapes: which model a plan is for."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


class PlanLike(Protocol):
    """What the tracer and ``memfit.apply`` read from a ``memfit.Plan``."""

    techniques: tuple[Any, ...]
    model_fingerprint: str
