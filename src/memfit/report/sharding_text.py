"""The sharding part of ``memfit plan``'s output: what ``fully_shard`` is called with, per unit."""

from __future__ import annotations

from memfit.profile import MemoryProfile
from memfit.techniques import Sharding

__all__ = ["sharding_lines"]


def sharding_lines(sharding: Sharding, profile: MemoryProfile | None) -> list[str]:
    """Lines naming the units, ``reshard_after_forward``, the mesh and the policies."""
    units = ", ".join(sharding.units) or "none"
    kept = set(sharding.keep_unsharded)
    if sharding.replicate > 1:
        mesh = (
            f"HSDP: {sharding.replicate} replica groups x {sharding.shards} GPUs "
            f"(mesh ('replicate', 'shard'); gradients all-reduced across groups)"
        )
    else:
        mesh = f"FSDP2 over {sharding.gpus} GPUs (1-D mesh)"
    reshard = [
        f"  {pattern}: reshard_after_forward={pattern not in kept}" for pattern in sharding.units
    ]
    dtypes = (sharding.param_dtype or "None", sharding.reduce_dtype or "None")
    lines = [
        f"sharding        {mesh}",
        f"fully_shard     each module matching {units}, deepest first; then the root",
        *reshard,
        "  (root): reshard_after_forward=True (FSDP2's default)",
        f"mp_policy       MixedPrecisionPolicy(param_dtype={dtypes[0]}, reduce_dtype="
        f"{dtypes[1]}): gathered and reduced in the weights' own dtype"
        if dtypes == ("None", "None")
        else f"mp_policy       MixedPrecisionPolicy(param_dtype={dtypes[0]}, "
        f"reduce_dtype={dtypes[1]})",
        "offload_policy  "
        + (
            "CPUOffloadPolicy() (shards, gradients, optimizer step on the host)"
            if sharding.offload
            else "none (OffloadPolicy())"
        ),
    ]
    if profile is not None:
        notes = [w for w in profile.warnings if w.startswith("per rank of")]
        lines += [f"per rank        {w.split(': ', 1)[1]}" for w in notes]
    return lines
