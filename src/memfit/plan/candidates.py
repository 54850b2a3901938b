"""Candidate plans and their screening predictions, before any of them is traced.

A candidate checkpoints the first ``k`` blocks with one policy (and, optionally, makes the
other blocks lean: pointwise submodules checkpointed, gated MLPs fused, lean autocast),
splits the batch into ``n`` micro-batches and optionally chunks the loss. Its memory and time
are predicted from the unmodified step and the block figures: activations a policy does not
keep are subtracted per block, what depends on the batch is divided by ``n``, the chunked loss
removes the logits measured in its own trace; time adds each block's recomputation, what each
micro-batch beyond the first added in a traced step of two, and what the chunked loss added in
its own trace. Screening only orders the candidates: the chosen one is always
traced in full.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from memfit.plan.policies import Policy
from memfit.profile import Category, MemoryProfile
from memfit.techniques import (
    Checkpoint,
    ChunkedLoss,
    FusedGatedMLP,
    LeanAutocast,
    MicroBatch,
    OffloadActivations,
    Technique,
)

__all__ = ["Candidate", "Baseline", "screen"]


@dataclass(frozen=True)
class Baseline:
    """What screening needs from the traced, unmodified step."""

    profile: MemoryProfile
    step_s: float
    micro_extra_s: float = 0.0  # what each micro-batch beyond the first adds (traced at two)
    grad_bytes: int = 0  # gradients, alive across micro-batches once there are several
    chunked_saving: int = 0  # allocated bytes the chunked loss saves (its own trace)
    chunked_extra_s: float = 0.0
    micro_scale: float = 1.0  # traced / screened batch-dependent memory at two micro-batches
    micro_ratio: float | None = None  # reserved / allocated at two micro-batches
    micro_batching: bool = True  # False: its trace failed, the technique is left out

    @property
    def static_bytes(self) -> int:
        cats = self.profile.by_category
        return sum(
            cats.get(c, 0)
            for c in (Category.PARAM, Category.BUFFER, Category.OPTIMIZER, Category.OTHER)
        )


@dataclass(frozen=True)
class Candidate:
    policy: Policy
    blocks: tuple[str, ...]
    micro_batches: int
    chunks: int
    peak_reserved: int
    peak_allocated: int
    step_s: float
    rest: tuple[str, ...] = ()  # the other blocks, made lean by rest_policy
    rest_policy: Policy | None = None

    def techniques(self, chunked: ChunkedLoss | None) -> tuple[Technique, ...]:
        """The techniques of this candidate; ``chunked``: the chunked loss its ``chunks`` set
        (the loss the planner checked it may compute), needed when ``chunks > 1``."""
        found: list[Technique] = []
        lean, lean_blocks = self._lean()
        if lean is not None and lean.gated:  # before any Checkpoint wraps these forwards
            # fully checkpointed blocks too: their recomputation then holds less at once
            full = self.blocks if self.policy.kind in ("full", "offloaded") else ()
            modules = tuple(f"{b}.{sub}" for b in full + lean_blocks for sub in lean.gated)
            found.append(FusedGatedMLP(modules=modules))
        if lean is not None and lean.lean_autocast:
            found.append(LeanAutocast(modules=lean_blocks))
        if self.blocks and self.policy.kind in ("full", "selective", "offloaded"):
            found.append(Checkpoint(modules=self.blocks, save=self.policy.save))
        if self.blocks and self.policy.kind == "offloaded":  # after the Checkpoint it wraps
            found.append(OffloadActivations(modules=self.blocks))
        if lean is not None and lean.submodules:
            modules = tuple(f"{b}.{sub}" for b in lean_blocks for sub in lean.submodules)
            found.append(Checkpoint(modules=modules))
        if self.micro_batches > 1:
            found.append(MicroBatch(n=self.micro_batches))
        if self.chunks > 1:
            assert chunked is not None, "a chunked candidate without the loss it computes"
            found.append(dataclasses.replace(chunked, chunks=self.chunks))
        return tuple(found)

    def _lean(self) -> tuple[Policy | None, tuple[str, ...]]:
        """The pointwise policy in force and the blocks it is applied to."""
        if self.policy.kind == "pointwise":
            return self.policy, self.blocks
        if self.rest and self.rest_policy is not None:
            return self.rest_policy, self.rest
        return None, ()

    @property
    def offloaded_bytes(self) -> int:
        """Activations this candidate moves to host memory per micro-batch."""
        return len(self.blocks) * self.policy.offloaded_bytes

    def label(self, first: str = "") -> str:
        """A short name for tables: ``first`` (what every plan does) and what this one adds."""
        parts = [first] if first else []
        if self.blocks and self.policy.kind == "pointwise":
            parts.append(f"lean x{len(self.blocks)}")
        elif self.blocks and self.policy.kind == "offloaded":
            parts.append(f"full ckpt x{len(self.blocks)}, boundaries to host")
        elif self.blocks and self.policy.kind != "none":
            parts.append(f"{self.policy.kind} ckpt x{len(self.blocks)}")
        if self.rest:
            parts.append(f"lean x{len(self.rest)}")
        if self.micro_batches > 1:
            parts.append(f"micro-batch x{self.micro_batches}")
        if self.chunks > 1:
            parts.append(f"chunked loss x{self.chunks}")
        return " + ".join(parts) or "unmodified"


def screen(
    baseline: Baseline,
    policies: list[Policy],
    blocks: list[str],
    saved_per_block: int,
    micro_batch_options: list[int],
    chunk_options: list[int],
) -> list[Candidate]:
    """Every combination, with predicted peak memory and step time."""
    profile = baseline.profile
    dynamic = profile.peak_allocated - baseline.static_bytes
    base_ratio = profile.peak_reserved / max(1, profile.peak_allocated)
    pointwise = next((p for p in policies if p.kind == "pointwise"), None)
    candidates = []
    for policy in policies:
        counts = [0] if policy.kind == "none" else range(1, len(blocks) + 1)
        rests: list[Policy | None] = [None]
        if pointwise is not None and policy.kind in ("full", "selective", "offloaded"):
            rests.append(pointwise)
        for k, rest in ((k, r) for k in counts for r in rests):
            others = len(blocks) - k if rest is not None else 0
            if rest is not None and others == 0:
                continue
            saving = k * max(0, saved_per_block - policy.kept_bytes)
            if rest is not None:
                saving += others * max(0, saved_per_block - rest.kept_bytes)
            transient = (saved_per_block - policy.kept_bytes) if k else 0
            recompute_s = k * policy.recompute_s + (others * rest.recompute_s if rest else 0.0)
            for n in micro_batch_options:
                for chunks in chunk_options:
                    chunk_saving = baseline.chunked_saving if chunks > 1 else 0
                    left = max(0, dynamic - saving - chunk_saving)
                    if n > 1:
                        scaled = (left + transient) * baseline.micro_scale / n
                        allocated = baseline.static_bytes + baseline.grad_bytes + int(scaled)
                        ratio = baseline.micro_ratio or base_ratio
                    else:
                        allocated = baseline.static_bytes + left + transient
                        ratio = base_ratio
                    time_s = (
                        baseline.step_s
                        + recompute_s
                        + (n - 1) * baseline.micro_extra_s
                        + (baseline.chunked_extra_s if chunks > 1 else 0.0)
                    )
                    candidates.append(
                        Candidate(
                            policy,
                            tuple(blocks[:k]),
                            n,
                            chunks,
                            int(allocated * ratio),
                            int(allocated),
                            time_s,
                            tuple(blocks[k:]) if rest is not None else (),
                            rest,
                        )
                    )
    return candidates
