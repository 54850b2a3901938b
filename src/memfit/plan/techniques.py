"""Techniques as data: what a plan does to a training step, one frozen dataclass each.

Each technique has exactly one applier (``memfit.apply``, registered by type) and is understood
by the estimator, which traces the step with the technique in force. Patterns name modules by
their fully qualified name with shell wildcards (``fnmatch``): ``"layers.*"`` is every direct
child of ``layers``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Checkpoint",
    "MicroBatch",
    "MixedPrecision",
    "ChunkedLoss",
    "FusedActivation",
    "FusedGatedMLP",
    "LeanAutocast",
    "FusedOptimizer",
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
    """Compute the LM head and cross-entropy over ``chunks`` slices of the sequence.

    The full-vocabulary logits are never materialised: each chunk's logits are recomputed in
    backward. The model must be a causal LM whose head is the module ``head`` and whose batch
    carries ``labels`` (next-token targets, ``-100`` ignored); the loss equals the model's own
    mean cross-entropy.
    """

    chunks: int
    head: str = "lm_head"
    labels_key: str = "labels"


@dataclass(frozen=True)
class FusedActivation:
    """Replace the activation modules matching ``modules`` by one fused kernel each.

    Only Hugging Face's elementwise tanh-GELUs (``gelu_new``, ``gelu_fast``, ``gelu_accurate``)
    qualify: ``nn.GELU(approximate="tanh")`` computes the same function, equal to rounding,
    keeping only its input for backward.
    """

    modules: tuple[str, ...]


@dataclass(frozen=True)
class FusedGatedMLP:
    """Compute the gate product of the gated MLPs matching ``modules`` in one autograd function.

    ``down(act(gate(x)) * up(x))`` (LLaMA, Mistral, Qwen2; SiLU or GELU) keeps ``gate(x)``,
    ``up(x)``, ``act(gate(x))`` and the product for backward; fused, only the first two are
    kept and the rest is recomputed in backward (two elementwise kernels). The same operators
    run on the same values, so gradients are bit-identical.
    """

    modules: tuple[str, ...]


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


Technique = (
    Checkpoint
    | MicroBatch
    | MixedPrecision
    | ChunkedLoss
    | FusedActivation
    | FusedGatedMLP
    | LeanAutocast
    | FusedOptimizer
)
