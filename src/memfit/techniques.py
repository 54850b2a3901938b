"""THE technique table: what a plan can do to a training step, and what each technique is.

Each technique is a frozen dataclass (its settings) and one ``TechniqueInfo`` row in ``TABLE``:
its name (for ``--allow``, ``allow=`` and a plan's JSON), whether it keeps the math exactly or
changes it (allowed only on request), what it cannot be combined with, and the module holding
its applier. Everything else reads this table: the planner (what it may choose), the tracer
(what it can predict), ``memfit.apply`` (which applier runs), the command line and
``memfit.__init__`` (what is public). Adding a technique is one dataclass and one row here, one
applier in ``memfit.apply`` (registered with ``memfit.apply.register_applier``), and what the
tracer and the cost model must know of it.

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

# Operators whose outputs selective checkpointing keeps by default: the expensive ones (matrix
# products and attention), so that only cheap pointwise work is recomputed in backward.
SELECTIVE_SAVE_DEFAULT: tuple[str, ...] = (
    "mm",
    "addmm",
    "bmm",
    "baddbmm",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "convolution",
)


def _patterns(technique: Any, field: str) -> None:
    """One pattern (a string) becomes a one-item tuple; anything but strings is refused."""
    value = getattr(technique, field)
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(
            f"{type(technique).__name__}({field}={value!r}): {field} must be module patterns "
            f"(strings), e.g. {field}=('layers.*',)"
        )
    object.__setattr__(technique, field, tuple(value))


@dataclass(frozen=True)
class Checkpoint:
    """Activation checkpointing of the modules matching ``modules`` (non-reentrant).

    Attributes:
        modules: fnmatch patterns of module names, e.g. ``("layers.0", "layers.1")``.
        save: operator names (ATen overload packets, e.g. ``"mm"``) whose outputs are kept in
            forward; everything else inside the module is recomputed in backward. Empty means
            full checkpointing (only the module's inputs are kept). Implemented with
            ``torch.utils.checkpoint.create_selective_checkpoint_contexts``.
    """

    modules: tuple[str, ...]
    save: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _patterns(self, "modules")
        _patterns(self, "save")

    @property
    def selective(self) -> bool:
        return bool(self.save)


@dataclass(frozen=True)
class MicroBatch:
    """Split each batch into ``n`` micro-batches and accumulate gradients.

    Losses are scaled by ``n_i / N`` so the update equals the full batch's (for losses that are
    means over samples). Sizes that do not divide the batch give one smaller last micro-batch.
    """

    n: int


@dataclass(frozen=True)
class MixedPrecision:
    """Run the step in ``precision`` (``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"``)."""

    precision: str


@dataclass(frozen=True)
class ChunkedLoss:
    """Compute the LM head and a causal-LM cross-entropy over ``chunks`` slices of the tokens.

    The full-vocabulary logits are never materialised: each slice's logits, loss and
    gradients are computed at once, in forward. The step's loss becomes
    ``CausalLMLoss(ignore_index, label_smoothing, z_loss, reduction, shift, labels_key)`` of
    the head's logits: ``memfit.plan`` chooses this technique only where that is the step's
    own loss (the user's ``loss_fn`` is that ``CausalLMLoss``, the model is a Hugging Face
    causal LM, or the model's loss matched it on the example batch). The head is the module
    ``head``; the batch carries the labels under ``labels_key``.
    """

    chunks: int
    head: str = "lm_head"
    labels_key: str = "labels"
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    reduction: str = "mean"
    shift: bool = True


@dataclass(frozen=True)
class FusedActivation:
    """Replace the activation modules matching ``modules`` by one fused kernel each.

    Only Hugging Face's elementwise tanh-GELUs (``gelu_new``, ``gelu_fast``, ``gelu_accurate``)
    qualify: ``nn.GELU(approximate="tanh")`` computes the same function, equal to rounding,
    keeping only its input for backward.
    """

    modules: tuple[str, ...]

    def __post_init__(self) -> None:
        _patterns(self, "modules")


@dataclass(frozen=True)
class FusedGatedMLP:
    """Compute the gate product of the gated MLPs matching ``modules`` in one autograd function.

    ``down(act(gate(x)) * up(x))`` (LLaMA, Mistral, Qwen2; SiLU or GELU) keeps ``gate(x)``,
    ``up(x)``, ``act(gate(x))`` and the product for backward; fused, only the first two are
    kept and the rest is recomputed in backward (two elementwise kernels). The same operators
    run on the same values, so gradients are bit-identical.
    """

    modules: tuple[str, ...]

    def __post_init__(self) -> None:
        _patterns(self, "modules")


@dataclass(frozen=True)
class LeanAutocast:
    """Keep no low-precision copies of the weights from forward to backward (mixed precision).

    Autocast casts each float32 weight to bf16/fp16 for its matrix product, caches the copy until
    the forward ends, and autograd keeps it until backward has used it: a second, half-size set
    of weights alive through the step. With this technique the cache is off and backward casts
    the weight again from the float32 parameter (the same deterministic cast: bit-identical).
    """


@dataclass(frozen=True)
class FusedOptimizer:
    """Run Adam's or AdamW's update as PyTorch's fused kernel (``fused=True``).

    On CUDA, ``torch.optim.AdamW`` defaults to its multi-tensor (``foreach``) implementation,
    whose step holds temporaries of one float32 per weight (LLaMA-1B: 3.55 GiB at the peak).
    The fused kernel updates each parameter in place. It is the same update, computed in
    float32 in another order: results agree within float32 rounding (on a CPU, 2.4% of the
    elements differed, by at most 2.4e-7 in values of order one). Gradients are unchanged.
    """


@dataclass(frozen=True)
class OffloadOptimizer:
    """Keep Adam/AdamW's float32 master weights and state in host memory; step on the CPU.

    The Linear weights of the modules matching ``modules`` stay on the GPU in ``dtype`` only
    (the copy bf16 autocast makes for the matrix products); their float32 masters and Adam's
    moments live in host memory. During backward each gradient is copied to pinned host memory
    as soon as it is complete, PyTorch's fused CPU Adam/AdamW updates the master in a worker
    thread while backward goes on, and the rounded weights are copied back before the next
    forward uses them. Gradients are identical (the float32 gradient of a weight autocast casts
    is its low-precision gradient widened); the update is AdamW's own, computed by the CPU
    kernel instead of the GPU's (equal to rounding). ZeRO-Offload's idea (Ren et al. 2021).

    Attributes:
        modules: module name patterns whose ``nn.Linear`` parameters are offloaded
            (``"**"``: every Linear; weights shared with other modules, such as tied
            embeddings, stay on the GPU).
        dtype: the GPU's working dtype: ``"bfloat16"`` under bf16-mixed precision,
            ``"float32"`` without autocast.
        threads: CPU threads of the host step; None: all cores but two.
    """

    modules: tuple[str, ...] = ("**",)
    dtype: str = "bfloat16"
    threads: int | None = None


@dataclass(frozen=True)
class OffloadActivations:
    """Keep what the modules matching ``modules`` save for backward in host memory.

    Applied to checkpointed modules, what they keep is their inputs (the checkpoint
    boundaries): each is copied to pinned host memory on a side stream during forward and its
    GPU memory released; in backward, the inputs of the next ``ahead`` modules are copied back
    while the current one is recomputed. Copies are bitwise: gradients are identical.

    Attributes:
        modules: module name patterns (usually checkpointed blocks).
        ahead: how many modules ahead backward prefetches.
        min_bytes: saved tensors smaller than this stay on the GPU.
    """

    modules: tuple[str, ...]
    ahead: int = 2
    min_bytes: int = 1 << 20


@dataclass(frozen=True)
class OptimizerInBackward:
    """Update each parameter as soon as its gradient is complete, then free the gradient.

    A ``Tensor.register_post_accumulate_grad_hook`` on every trainable parameter runs the
    user's optimizer on that parameter alone, inside backward; the gradient is set to None
    right after. The full set of gradients never exists at once, and the optimizer step's
    multi-tensor temporaries are one parameter's. For per-parameter optimizers (Adam, AdamW,
    SGD, and torchao's low-bit AdamW) each parameter's update is the same computation as in
    the plain step: identical updates. It cannot run with anything that needs every gradient
    before the update: gradient accumulation (``MicroBatch``, ``accumulate``), clipping by
    global norm (``clip_grad_norm``) and fp16 loss scaling (``GradScaler`` unscales and checks
    all gradients for infinities first).
    """


LOW_BIT_KINDS: tuple[str, ...] = ("8bit", "4bit", "fp8")
"""``LowBitOptimizer.kind`` values: torchao's ``AdamW8bit``, ``AdamW4bit``, ``AdamWFp8``."""


@dataclass(frozen=True)
class LowBitOptimizer:
    """Keep Adam's or AdamW's two moments block-wise quantized, through torchao.

    The user's ``torch.optim.Adam``/``AdamW`` (its parameter groups, learning rates, betas,
    weight decay) steps with torchao's ``Adam{8bit,4bit,Fp8}``/``AdamW{8bit,4bit,Fp8}``
    (``pip install "memfit[torchao]"``). Each moment of a parameter with at least 4096 elements
    (and a multiple of the block) is stored as codes plus one float32 scale per block: 8-bit
    codes and blocks of 256 (``"8bit"``), two 4-bit codes per byte and blocks of 128
    (``"4bit"``), float8 e4m3 codes and blocks of 256 (``"fp8"``); smaller ones stay in the
    parameter's dtype. The update is computed in float32 from the dequantized moments: it
    changes the math within torchao's documented precision.

    Attributes:
        kind: ``"8bit"``, ``"4bit"`` or ``"fp8"``.
        block_size: elements per scale; None for torchao's default (256, 128, 256).
    """

    kind: str = "8bit"
    block_size: int | None = None


@dataclass(frozen=True)
class PureBF16:
    """Keep the weights, their gradients and the optimizer state in bfloat16 (no autocast).

    Floating parameters and buffers are cast in place (``param.data``: the optimizer keeps its
    parameters). The step then runs without autocast, as the ``"bf16"`` precision does.
    Optionally the update is rounded stochastically to bfloat16 by torchao's ``_AdamW``
    (``bf16_stochastic_round=True``), which keeps small updates from vanishing on average.

    Attributes:
        stochastic_round: step AdamW through torchao with stochastic rounding (Adam/AdamW only;
            with ``LowBitOptimizer``, its optimizer rounds stochastically).
    """

    stochastic_round: bool = False


@dataclass(frozen=True)
class Freeze:
    """Train nothing of the modules matching ``modules``: no gradients, no optimizer state.

    Their parameters get ``requires_grad=False`` (restored on undo); the optimizer skips
    parameters without gradients. Models whose parameters the user froze already (LoRA,
    peft) need no technique: memfit plans gradients and state for trainable parameters only.
    """

    modules: tuple[str, ...]


@dataclass(frozen=True)
class Sharding:
    """Shard weights, gradients and optimizer state over ``gpus`` ranks with FSDP2.

    ``torch.distributed.fsdp.fully_shard`` is applied to each module matching ``units`` (in
    model order), then to the model itself (the root unit: whatever the units leave). Each unit's
    weights are all-gathered before its forward and backward and freed after (kept between
    forward and backward for the units matching ``keep_unsharded``:
    ``reshard_after_forward=False``); its gradients are reduce-scattered after its backward. The
    optimizer steps each rank's shards. The batch a plan is made for is each rank's batch.

    Attributes:
        gpus: the ranks of the job (its world size, ``torchrun --nproc-per-node``...).
        units: module name patterns, each matched module one ``fully_shard`` unit.
        keep_unsharded: unit patterns whose weights stay gathered from forward to backward.
        replicate: HSDP: ``gpus`` is ``replicate`` groups of ``gpus // replicate`` ranks; each
            group shards, the groups all-reduce their gradients (1: plain FSDP).
        offload: ``CPUOffloadPolicy``: shards, their gradients and the optimizer step live in
            host memory.
        param_dtype, reduce_dtype: ``MixedPrecisionPolicy``'s dtypes (``"bf16"``, ``"fp32"``,
            ``"fp16"``), None to gather and reduce in the weights' own dtype. Casting the
            weights before the all-gather runs the whole forward in that dtype: another model
            than autocast's mixed precision, so memfit's planner never sets them.
    """

    gpus: int
    units: tuple[str, ...] = ()
    keep_unsharded: tuple[str, ...] = ()
    replicate: int = 1
    offload: bool = False
    param_dtype: str | None = None
    reduce_dtype: str | None = None

    @property
    def shards(self) -> int:
        """Ranks each weight is divided over (``gpus`` for FSDP, a group's size for HSDP)."""
        return self.gpus // max(1, self.replicate)


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


Technique = (
    Checkpoint
    | MicroBatch
    | MixedPrecision
    | ChunkedLoss
    | FusedActivation
    | FusedGatedMLP
    | LeanAutocast
    | FusedOptimizer
    | OffloadOptimizer
    | OffloadActivations
    | OptimizerInBackward
    | LowBitOptimizer
    | PureBF16
    | Freeze
    | Sharding
)


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
        label=lambda t: "lean autocast",
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
