"""Lean blocks: pointwise checkpointing, fused gated MLPs and lean autocast, as one policy.

Pointwise checkpointing recomputes only a block's submodules that do no matrix products.

Activations written as chains of elementwise operators (Hugging Face GPT-2's tanh-GELU,
RMSNorm upcast to float32) keep several full-size intermediates for backward, yet cost little
to recompute: checkpointing just those submodules frees most of their memory for a few
memory-bound kernels (measured on an H200: GPT-2's GELUs hold 26% of its peak; LLaMA-1B's
norms 14%, recomputed for 0.1% of the step; bench/results/diag_techniques_h200.json). It is plain
``torch.utils.checkpoint`` on small modules, without selective checkpointing's per-operator
dispatch cost. A lean block adds ``FusedGatedMLP`` and ``LeanAutocast`` (``memfit.apply``): like
pointwise checkpointing they keep no tensor twice and change no result, so the planner traces
the three together once and offers them as one policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from memfit.errors import MemfitError
from memfit.plan.policies import Policy
from memfit.structure.gated_mlp import gated_mlps
from memfit.techniques import (
    SELECTIVE_SAVE_DEFAULT,
    Checkpoint,
    FusedGatedMLP,
    LeanAutocast,
)
from memfit.trace.estimate import StepTrace

__all__ = ["pointwise_submodules", "pointwise_policy", "lean_policy", "EXPENSIVE_OPS"]

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
    traced step's extra time, shared out the same way. ``gated`` and ``lean_autocast`` say what
    else the traced step did (``FusedGatedMLP`` on those submodules, ``LeanAutocast``).
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


def lean_policy(
    base: StepTrace,
    trace: Callable[..., StepTrace],
    blocks: list[str],
    saved: int,
    allow: Sequence[str],
    mixed: bool,
    drop: Callable[[str, str], None],
) -> list[Policy]:
    """The lean policy of ``blocks`` (none if nothing applies), from one trace of all of them.

    The block's gated MLPs are fused, its other pointwise submodules checkpointed and, under
    mixed precision, autocast made lean, as far as ``allow`` lets.
    """
    block = base.model.module.get_submodule(blocks[0])
    gated = gated_mlps(block) if "fused_gated_mlp" in allow else []
    submodules = [
        sub
        for sub in (pointwise_submodules(base, blocks[0]) if "checkpoint" in allow else [])
        if not any(sub.startswith(g + ".") for g in gated)  # fused MLPs no longer call these
    ]
    lean_autocast = mixed and "lean_autocast" in allow
    if not (submodules or gated or lean_autocast):
        return []
    techniques: list[Any] = []
    if gated:
        techniques.append(FusedGatedMLP(modules=tuple(f"{b}.{g}" for b in blocks for g in gated)))
    if lean_autocast:
        techniques.append(LeanAutocast(modules=tuple(blocks)))
    if submodules:
        techniques.append(Checkpoint(modules=tuple(f"{b}.{s}" for b in blocks for s in submodules)))
    try:
        traced = trace(tuple(techniques))
    except MemfitError as error:  # e.g. the blocks differ: some lack these submodules
        drop("lean blocks", str(error))
        return []
    return [pointwise_policy(base, traced, saved, submodules, len(blocks), gated, lean_autocast)]
