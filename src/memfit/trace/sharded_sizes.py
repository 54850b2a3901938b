"""The ranks of a sharded step as the tracer sees them: a fake process group standing for N
GPUs, and the size of an allocation made of shards for any N (``ShardedSize``), which lets one
trace of rank 0 predict the step for every number of GPUs (``memfit.trace.scaling``).

FSDP2 shards dimension 0 of each weight, padded to a multiple of N; rank 0's shard is the
largest (``ceil(dim0 / N)`` rows).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.trace.events import Allocation, local_tensor

__all__ = ["ROLES", "ShardedSize", "fake_process_group", "shard_size", "element_size"]

ROLES = (
    "sharded_param",
    "unsharded_param",
    "all_gather",
    "reduce_scatter",
    "sharded_grad",
    "sharded_state",
)
"""What FSDP2's allocations hold, as ``FSDPMemTracker`` names them (``sharded_state``:
optimizer state and temporaries on the shards)."""


@dataclass(frozen=True)
class ShardedSize:
    """The size of an allocation made of shards, for any number of shards.

    Attributes:
        terms: ``(dim0, row)`` of each weight it holds a shard of: its first dimension and the
            elements of one index of it (FSDP2 shards dimension 0, padded to a multiple of N).
        element_size: bytes per element.
        padded: the whole padded weights (all N shards: the all-gather output, the
            reduce-scatter input), not one shard.
    """

    terms: tuple[tuple[int, int], ...]
    element_size: int
    padded: bool = False

    def numel(self, shards: int) -> int:
        """Elements for ``shards`` shards: rank 0's shard is ``ceil(dim0 / N)`` rows."""
        rows = sum(-(-dim0 // shards) * row for dim0, row in self.terms)
        return rows * (shards if self.padded else 1)

    def bytes(self, shards: int) -> int:
        return self.numel(shards) * self.element_size


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A default process group of ``world_size`` fake ranks (this process is rank 0).

    Raises:
        InvalidInputError: a default process group exists already (inside a distributed job).
    """
    # private torch module: importing it registers the "fake" backend (torch >= 2.4)
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise InvalidInputError(
            "predicting a sharded step needs a process without a default process group (it "
            "simulates the ranks with a fake one); run memfit.plan / memfit.estimate before "
            "dist.init_process_group, or in another process, and load the plan with "
            "memfit.Plan.from_json inside the job"
        )
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        _check_fake_collectives(world_size)
        yield
    finally:
        dist.destroy_process_group()


def _check_fake_collectives(world_size: int) -> None:
    """FSDP2's two collectives on fake tensors, or an error naming this torch (the fake process
    groups of torch 2.6 and 2.9 take no fake tensors)."""
    # torch 2.14 renamed them (the old names warn FutureWarning); FSDP2 calls the new ones
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    try:
        with FakeTensorMode():
            shard = torch.empty(4)
            all_gather(torch.empty(4 * world_size), shard)
            reduce_scatter(shard, torch.empty(4 * world_size))
    except (TypeError, RuntimeError) as error:
        raise UnsupportedModelError(
            f"predicting a sharded step runs FSDP2 on a fake process group, and torch "
            f"{torch.__version__}'s fails on fake tensors ({type(error).__name__}: {error}); "
            f"predict sharded steps with a newer torch (2.11, 2.13 and 2.14 do it); one-GPU "
            f"estimates work on this one"
        ) from None


def element_size(allocation: Allocation) -> int:
    return getattr(torch, allocation.dtype).itemsize if allocation.dtype else 1


def shard_size(tensor: torch.Tensor, allocation: Allocation | None) -> ShardedSize | None:
    """How a DTensor's local storage scales, when it is sharded on dimension 0."""
    spec = getattr(tensor, "_spec", None)
    if spec is None or tensor.dim() == 0:
        return None
    sharded = [(i, p.dim) for i, p in enumerate(spec.placements) if p.is_shard()]
    if len(sharded) != 1 or sharded[0][1] != 0:
        return None
    local = local_tensor(tensor)
    element = local.element_size() if allocation is None else element_size(allocation)
    row = int(tensor.numel()) // max(1, int(tensor.shape[0]))
    size = ShardedSize(((int(tensor.shape[0]), row),), element)
    storage = local.untyped_storage().nbytes()
    if storage != size.bytes(spec.mesh.size(sharded[0][0])):
        return None  # not a plain shard (a view into a larger buffer): leave it unscaled
    return size
