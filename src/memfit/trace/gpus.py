"""A step on N GPUs: the plan's techniques sharded over them, and the ranks FSDP2 traces with."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.in_force import InForce, techniques_in_force
from memfit.structure.blocks import block_patterns, find_blocks
from memfit.techniques import Sharding
from memfit.trace.inputs import resolve
from memfit.trace.recorder import MemoryRecorder

__all__ = ["sharded_ranks", "with_gpus"]


def with_gpus(plan: Any, gpus: int, model: Any) -> list[Any]:
    """The plan's techniques, sharded over ``gpus`` GPUs (module docstring of ``estimate``)."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise InvalidInputError(f"gpus={gpus!r} must be a whole number of GPUs, e.g. gpus=8")
    in_force = techniques_in_force(plan)
    others = [t for t in in_force.techniques if not isinstance(t, Sharding)]
    if gpus == 1:
        return others
    found = in_force.sharding
    if found is not None:
        return [*others, dataclasses.replace(found, gpus=gpus, replicate=_replicas(found, gpus))]
    module = resolve(model, None)[1] if isinstance(model, str) else model
    if not isinstance(module, nn.Module):
        with torch.device("meta"):  # only its structure: no memory
            module = module()
    units = block_patterns(module, find_blocks(module))
    return [*others, Sharding(gpus=gpus, units=units)]


def _replicas(sharding: Sharding, gpus: int) -> int:
    """HSDP keeps its shard group's size; the number of groups follows ``gpus``."""
    if sharding.replicate <= 1:
        return 1
    if gpus % sharding.shards:
        raise InvalidInputError(
            f"the plan's HSDP shards over groups of {sharding.shards} GPUs, which do not divide "
            f"gpus={gpus}; use a multiple of {sharding.shards}, or make a plan for {gpus} GPUs"
        )
    return gpus // sharding.shards


@contextlib.contextmanager
def sharded_ranks(techniques: InForce, recorder: MemoryRecorder) -> Iterator[Any]:
    """For a sharded plan, its ranks as a fake process group and FSDP2's bookkeeping."""
    if techniques.sharding is None:
        yield None
        return
    # not at the top: FSDP2's modules take 0.8 s to import, which one-GPU traces never need
    from memfit.trace.sharding import ShardedTracing, fake_process_group

    sharding = techniques.sharding
    with fake_process_group(sharding.gpus):
        yield ShardedTracing(recorder, sharding.shards)
