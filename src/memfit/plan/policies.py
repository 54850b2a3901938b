"""Checkpointing policies for one block, from none to full, with selective ones between.

Selective checkpointing keeps the outputs of some operator kinds and recomputes the rest in
backward. Which kinds to keep is a 0-1 knapsack: keep the kinds that would cost the most time to
recompute, within a cap on the bytes kept. It is solved exactly with HiGHS
(``scipy.optimize.milp``) for several caps, giving a ladder of policies between no
checkpointing and full checkpointing, so the memory/time frontier has no gap.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from memfit.plan.blocks import BlockStats

__all__ = ["Policy", "block_policies", "offloaded_policy"]

# Operators that produce no data of their own (views, casts of views) or are not worth keeping.
_NEVER_SAVE = {
    "view",
    "t",
    "transpose",
    "_unsafe_view",
    "expand",
    "detach",
    "slice",
    "split",
    "permute",
    "unsqueeze",
    "squeeze",
    "select",
    "clone",
    "contiguous",
}


@dataclass(frozen=True)
class Policy:
    """How one block is checkpointed.

    Attributes:
        kind: "none", "pointwise", "selective", "full" or "offloaded" (full, with the
            checkpoint boundaries in host memory: ``OffloadActivations``).
        save: operator kinds whose outputs are kept (selective only).
        kept_bytes: predicted bytes the block keeps from forward to backward (besides inputs).
        recompute_s: predicted time to recompute in backward.
        submodules: for "pointwise", the checkpointed submodules, relative to the block.
        gated: for "pointwise", the gated MLPs given ``FusedGatedMLP``, relative to the block.
        lean_autocast: for "pointwise", whether the plan recasts weights in backward
            (``LeanAutocast``, a whole-step technique credited to the blocks that keep their
            activations, where autocast's copies of their weights would be kept).
    """

    kind: str
    save: tuple[str, ...]
    kept_bytes: int
    recompute_s: float
    submodules: tuple[str, ...] = ()
    gated: tuple[str, ...] = ()
    lean_autocast: bool = False
    offloaded_bytes: int = 0  # per block, to host memory and back each step


def _knapsack(values: np.ndarray, weights: np.ndarray, cap: float) -> np.ndarray:
    """Maximise values . x subject to weights . x <= cap, x binary (HiGHS via scipy)."""
    with _native_stdout_silenced():
        result = milp(
            c=-values,
            constraints=LinearConstraint(weights[np.newaxis, :], -np.inf, cap),
            integrality=np.ones_like(values),
            bounds=Bounds(0, 1),
        )
    if result.x is None:
        return np.zeros_like(values)
    return np.round(result.x).astype(bool)


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Send what C code writes to the process's standard output to /dev/null meanwhile.

    HiGHS (1.12, in scipy 1.17) prints ``HighsMipSolverData::transformNewIntegerFeasible
    Solution tmpSolver.run();`` from C++ on some knapsacks whatever its output options say
    (HiGHS.jl#312): a Qwen2-shaped block's did, into ``memfit plan --format json``'s output.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def block_policies(
    stats: BlockStats, selective_op_s: float = 0.0, levels: tuple[float, ...] = (0.2, 0.4, 0.6)
) -> list[Policy]:
    """None, full, and selective policies keeping at most ``level`` of the block's outputs.

    ``selective_op_s`` is selective checkpointing's own cost per operator and pass (forward and
    recomputation), on top of the operators it recomputes.
    """
    dispatch = 2 * stats.forward_ops * selective_op_s
    policies = [
        Policy("none", (), stats.saved_bytes, 0.0),
        Policy("full", (), stats.kept_full_bytes, stats.forward_s),
    ]
    groups = [g for g in stats.groups if g.op not in _NEVER_SAVE and g.output_bytes > 0]
    if not groups:
        return policies
    values = np.array([g.seconds for g in groups], dtype=float)
    weights = np.array([g.output_bytes for g in groups], dtype=float)
    seen: set[tuple[str, ...]] = set()
    for level in levels:
        chosen = _knapsack(values, weights, level * weights.sum())
        save = tuple(sorted(g.op for g, keep in zip(groups, chosen, strict=True) if keep))
        if not save or save in seen:
            continue
        seen.add(save)
        kept = int(weights[chosen].sum()) + stats.kept_full_bytes
        recompute = float(stats.forward_s - values[chosen].sum()) + dispatch
        policies.append(Policy("selective", save, min(kept, stats.saved_bytes), recompute))
    return policies


def offloaded_policy(stats: BlockStats, pcie_bytes_s: float) -> Policy:
    """Full checkpointing with the block's boundary (what full checkpointing keeps) in host
    memory: nothing kept on the GPU between forward and backward, and the forward stalls when
    the boundary takes longer to copy out than the block takes to run."""
    copy_s = stats.kept_full_bytes / pcie_bytes_s
    stall_s = max(0.0, copy_s - stats.forward_s)
    return Policy(
        "offloaded", (), 0, stats.forward_s + stall_s, offloaded_bytes=stats.kept_full_bytes
    )
