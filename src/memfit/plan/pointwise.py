"""Pointwise checkpointing: recompute only a block's submodules that do no matrix products.

Activations written as chains of elementwise operators (Hugging Face GPT-2's tanh-GELU,
RMSNorm upcast to float32) keep several full-size intermediates for backward, yet cost little
to recompute: checkpointing just those submodules frees most of their memory for a few
memory-bound kernels (measured on an H200: GPT-2's GELUs hold 26% of its peak; LLaMA-1B's
norms 14%, recomputed for 0.1% of the step; bench/results/diag_techniques_h200.json). It is plain
``torch.utils.checkpoint`` on small modules, without selective checkpointing's per-operator
dispatch cost.
"""

from __future__ import annotations

from memfit.plan.policies import Policy
from memfit.plan.techniques import SELECTIVE_SAVE_DEFAULT
from memfit.trace.estimate import StepTrace

__all__ = ["pointwise_submodules", "pointwise_policy", "EXPENSIVE_OPS"]

# Operators whose recomputation costs real work: those selective checkpointing keeps by default
# (products, attention, convolutions), their composite spellings, and embedding lookups.
EXPENSIVE_OPS = frozenset(SELECTIVE_SAVE_DEFAULT) | {
    "matmul",
    "linear",
    "_flash_attention_forward",
    "_efficient_attention_forward",
    "embedding",
}


def pointwise_submodules(traced: StepTrace, block: str, min_share: float = 0.02) -> list[str]:
    """Submodules of ``block`` (names relative to it) worth checkpointing on their own.

    A submodule qualifies when none of its forward operators is in ``EXPENSIVE_OPS`` and it
    keeps at least ``min_share`` of the block's activations; the outermost qualifying module
    of a branch is taken.
    """
    keeps = {m.fqn: m.activation_bytes for m in traced.profile.modules}
    total = keeps.get(block, 0)
    if total <= 0:
        return []
    expensive: set[str] = set()
    has_ops: set[str] = set()
    prefix = block + "."
    for op in traced.record.ops:
        if op.stage != "forward" or not op.module.startswith(prefix):
            continue
        parts = op.module.split(".")
        for n in range(len(block.split(".")) + 1, len(parts) + 1):
            name = ".".join(parts[:n])
            has_ops.add(name)
            if op.op.split(".")[0] in EXPENSIVE_OPS:
                expensive.add(name)
    chosen: list[str] = []
    for name in sorted(has_ops, key=lambda n: (n.count("."), n)):
        if name in expensive or keeps.get(name, 0) < min_share * total:
            continue
        if any(name.startswith(c + ".") for c in chosen):
            continue
        chosen.append(name)
    return [name.removeprefix(prefix) for name in chosen]


def pointwise_policy(
    base: StepTrace,
    traced: StepTrace,
    saved_per_block: int,
    submodules: list[str],
    blocks: int,
    gated: list[str] | None = None,
    lean_autocast: bool = False,
) -> Policy:
    """The policy from a step ``traced`` with ``submodules`` checkpointed in all ``blocks``.

    The saving is the traced step's lower peak, shared out over the blocks: what a block keeps
    is its unmodified ``saved_per_block`` less that share (per-module attribution would miss
    what the recomputation frees in the modules around it). The recomputation time is the
    traced step's extra time, shared out the same way. ``gated`` and ``lean_autocast`` say what else
    the traced step did (``FusedGatedMLP`` on those submodules, ``LeanAutocast``).
    """
    saving = max(0, base.profile.peak_allocated - traced.profile.peak_allocated) // max(1, blocks)
    extra = (traced.profile.step_time_s or 0.0) - (base.profile.step_time_s or 0.0)
    return Policy(
        "pointwise",
        (),
        max(0, saved_per_block - saving),
        max(0.0, extra) / max(1, blocks),
        tuple(submodules),
        tuple(gated or ()),
        lean_autocast,
    )
