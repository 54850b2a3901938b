"""What each technique is: the settings a plan records for it, one frozen dataclass each.

The table that says what each technique does to the step (its name, exactness, exclusions,
applier) is ``memfit.techniques``, which re-exports these classes; import them from there.
Patterns name modules by their fully qualified name with shell wildcards (``fnmatch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memfit.errors import InvalidInputError

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
    """Run the step in ``precision`` (``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"``).

    ``"bf16"`` (pure) is accepted only with ``PureBF16`` in the same plan: casting the weights
    changes the math, and only that technique, named, does it.
    """

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

    Attributes:
        modules: fnmatch patterns of the modules whose weight copies are not kept (the planner
            names its lean blocks); empty: the whole model. Autocast's cache is off for the
            whole step either way.
    """

    modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _patterns(self, "modules")


@dataclass(frozen=True)
class ExpandableSegments:
    """Let PyTorch's CUDA caching allocator grow its segments in place.

    By default the allocator reserves memory in separate segments (``cudaMalloc``) and splits
    them into blocks; a freed block can only be reused by a request that fits it, so reserved
    memory runs above what is allocated (measured on an H200: LLaMA-1B's plan at its full
    checkpointing's memory 4.2%; a 6-layer ``nn.TransformerEncoder`` with every block
    checkpointed 10-17%). With ``expandable_segments:True`` (PyTorch's
    ``PYTORCH_CUDA_ALLOC_CONF`` option, set at run time by ``memfit.apply`` and restored by
    undo) each stream's segment is one range of virtual addresses that maps and unmaps 2 MiB
    pages as it grows, so freed memory at its end is reused by any request. Only where memory
    comes from changes: identical gradients and updates. The setting is the process's: it
    also holds for what else runs in it, and segments reserved before ``memfit.apply`` (the
    model's weights) stay as they were.
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
