"""One rank of an FSDP2-sharded step, traced on fake tensors in a single process.

A fake process group (``torch.testing._internal.distributed.fake_pg``: collectives return at
once and move nothing) stands for the ``gpus`` ranks, so ``fully_shard`` shards the fake model
as it would on rank 0 of a real job and its forward, backward and optimizer step run PyTorch's
own FSDP2 code. What the memory recorder needs beyond a one-GPU trace is added here:

* FSDP2 frees and re-allocates unsharded parameters by resizing their storage in place
  (``free_storage`` / ``alloc_storage``); those calls are reported to the recorder as frees and
  allocations.
* FSDP2 runs its all-gather copy-in, all-gather and reduce-scatter on their own streams
  (``torch.cpu.Stream`` objects on the fake CPU device, CUDA streams on a GPU); each allocation
  records the stream current when it was made, since the caching allocator keeps a pool per
  stream.
* DTensors (the sharded parameters, their gradients and optimizer state) are recorded by their
  local shard; each allocation made of shards, or inside FSDP2's all-gather or reduce-scatter,
  records how its size depends on the number of shards (``ShardedSize``), so that one trace
  predicts the same step for any number of GPUs (``memfit.trace.scaling``).

Rank 0 is traced: its shard of every weight is the largest (``ceil(dim0 / N)`` rows), so it
holds at least as much as any other rank.

Known limitations:
    * ``CPUOffloadPolicy``: the fake CPU device cannot tell host from GPU memory; the shards,
      their gradients and the optimizer state and temporaries are taken out of the GPU trace
      after it (``host_resident``), but the GPU copy of each shard made before its all-gather
      (one unit's shards at a time) is not counted.
    * Collectives move no data and take no time here; their time is ``memfit.cost``'s
      (``memfit.collectives``).
    * A job whose default process group is already initialised cannot trace a sharded step in
      the same process (the fake process group would replace it).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group

from memfit.profile import Category
from memfit.trace.cpu_streams import CpuStreams
from memfit.trace.events import Allocation, Trace, local_tensor
from memfit.trace.fakeify import FakeModel
from memfit.trace.recorder import MemoryRecorder
from memfit.trace.sharded_sizes import (
    ROLES,
    ShardedSize,
    element_size,
    fake_process_group,
    shard_size,
)

__all__ = [
    "ShardedSize",
    "ShardedTracing",
    "fake_process_group",
    "ROLES",
]


@dataclass
class _Scope:
    """What FSDP2 is doing now: the role and the weights of the allocations it makes."""

    role: str
    terms: tuple[tuple[int, int], ...]
    shards: int
    collective: bool = False  # its all-gather output / reduce-scatter input is recorded


def _terms(fsdp_params: Any) -> tuple[tuple[int, int], ...]:
    terms = []
    for fsdp_param in fsdp_params:
        shape = fsdp_param._orig_size
        dim0 = shape[0] if len(shape) else 1
        terms.append((dim0, max(1, int(torch.Size(shape).numel()) // max(1, dim0))))
    return tuple(terms)


class ShardedTracing:
    """The FSDP2-specific bookkeeping of one traced step (see the module docstring).

    Args:
        recorder: the step's recorder; its ``stream_of`` and ``on_new`` are set here.
        shards: ranks each weight is divided over.
    """

    def __init__(self, recorder: MemoryRecorder, shards: int) -> None:
        self.recorder = recorder
        self.shards = shards
        self.sizes: dict[int, ShardedSize] = {}  # allocation key -> how its size scales
        self.roles: dict[int, str] = {}  # allocation key -> ROLES
        self._scope: _Scope | None = None
        self._shard_terms: dict[tuple[int, ...], set[tuple[int, int]]] = {}  # local shape ->
        self.ambiguous: set[int] = set()  # allocations whose shard no shape tells apart
        self.collectives: list[tuple[str, ShardedSize]] = []  # in the order the step ran them
        recorder.stream_of = CpuStreams()
        recorder.on_new = self._on_new
        recorder.shards_only = True

    # --- the model --------------------------------------------------------------------------
    @staticmethod
    def own_copy(fake_model: FakeModel) -> FakeModel:
        """A copy of the model holding the fake tensors itself, for ``fully_shard`` to change.

        The user's module is never sharded: its structure is copied (``deepcopy`` with each
        parameter and buffer mapped to its fake tensor, so no weight is copied).
        """
        if not fake_model.swap:
            return fake_model
        module = fake_model.module
        memo: dict[int, Any] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            fake = fake_model.params.get(name)
            if fake is not None and id(param) not in memo:
                memo[id(param)] = nn.Parameter(fake, requires_grad=param.requires_grad)
        for name, buffer in module.named_buffers(remove_duplicate=False):
            fake = fake_model.buffers.get(name)
            if fake is not None:
                memo[id(buffer)] = fake
        copied = copy.deepcopy(module, memo)
        return refreshed(FakeModel(copied, {}, {}, swap=False))

    # --- the optimizer ----------------------------------------------------------------------
    def local_params(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The tensors the traced optimizer steps: each DTensor parameter's local shard.

        DTensor runs each optimizer operator on the local shards, so the memory is the same;
        on fake tensors its sharding propagation over hundreds of parameters takes seconds per
        operator, which stepping the shards directly avoids.
        """
        self._pairs = [(p, local_tensor(p)) for p in params]
        for param, local in self._pairs:
            if local is not param and param.dim() > 0:
                row = int(param.numel()) // max(1, int(param.shape[0]))
                self._shard_terms.setdefault(tuple(local.shape), set()).add(
                    (int(param.shape[0]), row)
                )
        return [local for _, local in self._pairs]

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Give the shards their gradients before each step; clear both in ``zero_grad``."""

        def before(*_: Any) -> None:
            for param, local in self._pairs:
                if local is not param:
                    local.grad = None if param.grad is None else local_tensor(param.grad)
            self._scope = _Scope("optimizer", (), self.shards)

        def after(*_: Any) -> None:
            self._scope = None
            for param, local in self._pairs:
                if local is not param:
                    local.grad = None  # the DTensor keeps it until zero_grad

        optimizer.register_step_pre_hook(before)
        optimizer.register_step_post_hook(after)
        shard_zero_grad = optimizer.zero_grad

        def zero_grad(set_to_none: bool = True) -> None:
            shard_zero_grad(set_to_none)
            for param, _ in self._pairs:
                param.grad = None

        optimizer.zero_grad = zero_grad  # type: ignore[method-assign]

    # --- recording --------------------------------------------------------------------------
    def _on_new(self, allocation: Allocation, made_by: torch.Tensor) -> None:
        if self._scope is not None and self._scope.role == "optimizer":
            self._optimizer_allocation(allocation)
            return
        if made_by is not local_tensor(made_by):  # a DTensor: made of its local shard
            size = shard_size(made_by, allocation)
            if size is not None:
                role = "sharded_param" if allocation.op == "parameter" else "sharded_state"
                self._tag(allocation, size, role)
            return
        scope = self._scope
        if scope is None:
            return
        padded = ShardedSize(scope.terms, element_size(allocation), padded=True)
        shard = ShardedSize(scope.terms, padded.element_size)
        numel = allocation.size // max(1, padded.element_size)
        if numel == padded.numel(scope.shards):
            role = {"gather": "all_gather", "param": "unsharded_param"}.get(
                scope.role, "reduce_scatter"
            )
            self._tag(allocation, padded, role)
            if scope.role in ("gather", "reduce") and not scope.collective:
                scope.collective = True  # the first whole buffer: what the collective moves
                self.collectives.append((role, padded))
        elif numel == shard.numel(scope.shards):
            role = "all_gather" if scope.role in ("gather", "param") else "sharded_grad"
            self._tag(allocation, shard, role)

    def _optimizer_allocation(self, allocation: Allocation) -> None:
        """State and temporaries of a shard: shaped like it (scalars are not sharded)."""
        terms = self._shard_terms.get(allocation.shape)
        if not terms:
            return
        if len(terms) > 1:  # two weights whose shards have this shape: which one is unknown
            self.ambiguous.add(allocation.key)
            return
        (term,) = terms
        self._tag(allocation, ShardedSize((term,), element_size(allocation)), "sharded_state")

    def _tag(self, allocation: Allocation, size: ShardedSize, role: str) -> None:
        self.sizes[allocation.key] = size
        self.roles[allocation.key] = role
        if role in ("unsharded_param", "all_gather"):
            allocation.category = Category.PARAM
        elif role in ("reduce_scatter", "sharded_grad"):
            allocation.category = Category.GRAD

    def host_resident(self, trace: Trace) -> tuple[Trace, int]:
        """``trace`` without what ``CPUOffloadPolicy`` keeps in host memory; its bytes."""
        keys = {k for k, role in self.roles.items() if role.startswith("sharded_")}
        allocations = dict(trace.allocations)
        host = 0
        for key in keys & allocations.keys():
            host += allocations[key].size
            allocations[key] = dataclasses.replace(allocations[key], size=0)
        return Trace(allocations=allocations, events=trace.events, phases=trace.phases), host

    def collective_bytes(self, shards: int) -> list[tuple[str, int]]:
        """``(kind, bytes)`` of each all-gather and reduce-scatter, for ``shards`` shards."""
        return [(kind, size.bytes(shards)) for kind, size in self.collectives]

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """FSDP2's storage resizing and collectives reported to the recorder, while active."""
        patches = [
            (_fsdp_param, "alloc_storage", self._resizing(_fsdp_param.alloc_storage)),
            (_fsdp_param, "free_storage", self._resizing(_fsdp_param.free_storage)),
            (
                _fsdp_param_group,
                "foreach_all_gather",
                self._scoped(_fsdp_param_group.foreach_all_gather, "gather"),
            ),
            (
                _fsdp_param_group,
                "foreach_reduce",
                self._scoped(_fsdp_param_group.foreach_reduce, "reduce"),
            ),
            (
                _fsdp_param.FSDPParam,
                "init_all_gather_outputs",
                self._per_param(_fsdp_param.FSDPParam.init_all_gather_outputs),
            ),
            (
                _fsdp_param.FSDPParam,
                "alloc_all_gather_outputs",
                self._per_param(_fsdp_param.FSDPParam.alloc_all_gather_outputs),
            ),
        ]
        if hasattr(_fsdp_param_group, "alloc_storage"):  # 2.13 imports it there, 2.6 does not
            resize = self._resizing(_fsdp_param_group.alloc_storage)
            patches.append((_fsdp_param_group, "alloc_storage", resize))
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, replacement in patches:
                setattr(owner, name, replacement)
            yield
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)

    def _resizing(self, original: Callable[[torch.Tensor], None]) -> Callable[..., None]:
        @functools.wraps(original)
        def resize(tensor: torch.Tensor) -> None:
            original(tensor)
            self.recorder.resized(tensor, "unshard" if tensor.untyped_storage().nbytes() else "")

        return resize

    def _scoped(self, original: Callable[..., Any], role: str) -> Callable[..., Any]:
        @functools.wraps(original)
        def run(fsdp_params: Any, *args: Any, **kwargs: Any) -> Any:
            with self._in_scope(role, _terms(fsdp_params)):
                return original(fsdp_params, *args, **kwargs)

        return run

    def _per_param(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def run(fsdp_param: Any, *args: Any, **kwargs: Any) -> Any:
            with self._in_scope("param", _terms([fsdp_param])):
                return original(fsdp_param, *args, **kwargs)

        return run

    @contextlib.contextmanager
    def _in_scope(self, role: str, terms: tuple[tuple[int, int], ...]) -> Iterator[None]:
        outer, self._scope = self._scope, _Scope(role, terms, self.shards)
        try:
            yield
        finally:
            self._scope = outer


def refreshed(fake_model: FakeModel) -> FakeModel:
    """``fake_model`` with the parameters and buffers its module holds now (after sharding)."""
    fake_model.params = dict(fake_model.module.named_parameters())
    fake_model.buffers = dict(fake_model.module.named_buffers())
    return fake_model
