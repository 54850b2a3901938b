"""Lean candidates: which techniques a plan with lean blocks carries, in which order."""

from __future__ import annotations

from memfit.plan.candidates import Candidate
from memfit.plan.policies import Policy
from memfit.techniques import Checkpoint, ChunkedLoss, FusedGatedMLP, LeanAutocast

LEAN = Policy("pointwise", (), 10, 0.001, ("norm",), ("mlp",), True)
FULL = Policy("full", (), 1, 0.01)


def candidate(policy: Policy, blocks: tuple[str, ...], rest: tuple[str, ...] = ()) -> Candidate:
    return Candidate(policy, blocks, 1, 1, 0, 0, 0.0, rest, LEAN if rest else None)


def test_full_blocks_with_lean_rest_fuse_every_mlp_before_checkpointing():
    techniques = candidate(FULL, ("b.0",), rest=("b.1", "b.2")).techniques(ChunkedLoss(1))
    assert techniques == (
        FusedGatedMLP(modules=("b.0.mlp", "b.1.mlp", "b.2.mlp")),
        LeanAutocast(modules=("b.1", "b.2")),  # the lean blocks only: the others keep nothing
        Checkpoint(modules=("b.0",)),
        Checkpoint(modules=("b.1.norm", "b.2.norm")),
    )
    assert candidate(FULL, ("b.0",), rest=("b.1",)).label() == "full ckpt x1 + lean x1"


def test_all_blocks_lean():
    techniques = candidate(LEAN, ("b.0", "b.1")).techniques(ChunkedLoss(1))
    assert techniques == (
        FusedGatedMLP(modules=("b.0.mlp", "b.1.mlp")),
        LeanAutocast(modules=("b.0", "b.1")),
        Checkpoint(modules=("b.0.norm", "b.1.norm")),
    )


def test_no_lean_techniques_without_a_lean_policy():
    assert candidate(FULL, ("b.0",)).techniques(ChunkedLoss(1)) == (Checkpoint(modules=("b.0",)),)
