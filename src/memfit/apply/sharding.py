"""The Sharding applier: FSDP2 (``fully_shard``) on the planned units, on every rank of a job.

Run inside the job (``torchrun --nproc-per-node N``), after ``dist.init_process_group``, on the
model every rank built the same way::

    plan = memfit.Plan.from_json(Path("plan.json").read_text())
    step = memfit.apply(plan, model, optimizer)    # on every rank
    loss = step(batch)                             # each rank's batch

Every rank casts the same three votes (an all-reduce over the default process group): before
the device mesh is made, after ``fully_shard``, and at the end of ``memfit.apply``. A rank that
fails anywhere in between (a wrong pattern, another world size, an error inside
``fully_shard``) votes so, and every rank then raises the same ``ShardingError`` naming the
ranks that failed, instead of the others waiting forever in their first all-gather.

Sharding cannot be undone: FSDP2 replaces the parameters by sharded ones and has no way back.
``plan.undo(model)`` refuses a plan with ``Sharding``; save a checkpoint
(``torch.distributed.checkpoint``) and rebuild the model to train it another way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._subclasses.fake_tensor import is_fake, unset_fake_temporarily
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from memfit.errors import InvalidInputError, MemfitError
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.structure.matching import match_modules, name_matches
from memfit.techniques import Sharding

__all__ = ["apply_sharding", "ShardingError", "Agreement", "DTYPES"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class ShardingError(MemfitError):
    """Sharding failed on at least one rank; raised on every rank of the job."""


def _check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    if optimizer.state:
        raise InvalidInputError(
            "the optimizer has stepped already (it has state), and its state is not sharded; "
            "pass an optimizer that has not stepped yet"
        )


@register_applier(Sharding, check_optimizer=_check_optimizer)
def apply_sharding(model: nn.Module, technique: Sharding, context: ApplyContext) -> UndoFn:
    """``fully_shard`` each unit (deepest first), then the model itself, over ``gpus`` ranks.

    On fake tensors (memfit's tracer, under a fake process group) the same calls shard the
    fake model. The optimizer given to ``memfit.apply`` is changed to step the sharded
    parameters (its parameter groups refer to the new ones); it must not have stepped yet.

    Known limitations:
        * Units are applied deepest first, each once; a pattern matching nested modules gives
          nested units, as FSDP2 allows.
        * ``keep_unsharded`` units keep their gathered weights from forward to backward; the
          root unit follows FSDP2's default (kept).
        * Cannot be undone (see the module docstring); a failure after ``fully_shard`` began
          leaves the model partly sharded, and every rank raises.

    Raises:
        InvalidInputError: malformed settings, patterns that match nothing, or a job whose
            world size is not ``gpus`` (raised before anything changes).
    """
    agreement = Agreement.of(context)
    units, keep, mesh_shape = _check(model, technique)
    agreement.vote("check the plan")  # before the mesh: making one is collective under HSDP
    mesh = _mesh(model, technique, mesh_shape)
    before = dict(model.named_parameters())
    try:
        _shard(model, technique, mesh, units, keep)
    except Exception as error:
        agreement.failed(error)
        raise
    agreement.vote("fully_shard")
    after = dict(model.named_parameters())
    context.optimizer_changes.append(_optimizer_change(before, after))
    return _undo_refused if not _on_fake(model) else _nothing


def _nothing() -> None:
    return None  # the tracer's copy of the model is thrown away


def _undo_refused() -> None:
    raise MemfitError(
        "sharding cannot be undone: fully_shard replaced the model's parameters by sharded "
        "ones. Save a checkpoint (torch.distributed.checkpoint) and rebuild the model instead"
    )


def _on_fake(model: nn.Module) -> bool:
    return any(is_fake(p) for p in model.parameters())


def _check(
    model: nn.Module, technique: Sharding
) -> tuple[list[tuple[str, nn.Module]], set[str], tuple[int, ...]]:
    """Everything that can be checked without a collective."""
    gpus, replicate = technique.gpus, technique.replicate
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 2:
        raise InvalidInputError(f"Sharding(gpus={gpus!r}): gpus must be an integer >= 2")
    if not isinstance(replicate, int) or replicate < 1 or gpus % replicate:
        raise InvalidInputError(
            f"Sharding(replicate={replicate!r}) must divide gpus={gpus} (HSDP: replicate groups "
            f"of gpus // replicate ranks); use 1 for plain FSDP"
        )
    for name in ("param_dtype", "reduce_dtype"):
        value = getattr(technique, name)
        if value is not None and value not in DTYPES:
            raise InvalidInputError(
                f"Sharding({name}={value!r}): allowed are {', '.join(DTYPES)} or None"
            )
    if not dist.is_available() or not dist.is_initialized():
        raise InvalidInputError(
            f"this plan shards the model over {gpus} GPUs, but this process is not part of a "
            f"distributed job; run it with torchrun --nproc-per-node {gpus} (or on nodes "
            f"adding up to {gpus} ranks) and call dist.init_process_group() before memfit.apply"
        )
    world = dist.get_world_size()
    if world != gpus:
        raise InvalidInputError(
            f"this plan shards the model over {gpus} GPUs, but the job has {world} ranks; make "
            f"a plan for {world} GPUs (memfit plan ... --gpus {world})"
        )
    units = match_modules(
        model, technique.units, what="Sharding", hint=lambda: "'layers.*' or 'model.layers.*'"
    )
    names = [name for name, _ in units]
    keep = {n for n in names if any(name_matches(n, p) for p in technique.keep_unsharded)}
    unmatched = [p for p in technique.keep_unsharded if not any(name_matches(n, p) for n in names)]
    if unmatched:
        raise InvalidInputError(
            f"Sharding(keep_unsharded={unmatched}) names no unit; it must match some of the "
            f"units ({', '.join(names[:4])}{'...' if len(names) > 4 else ''})"
        )
    shape = (replicate, gpus // replicate) if replicate > 1 else (gpus,)
    return units, keep, shape


def _mesh(model: nn.Module, technique: Sharding, shape: tuple[int, ...]) -> DeviceMesh:
    on_gpu = torch.cuda.is_available() and not _on_fake(model)
    names = ("replicate", "shard") if len(shape) == 2 else None
    with unset_fake_temporarily():  # the mesh reads its rank table: real tensors
        return init_device_mesh("cuda" if on_gpu else "cpu", shape, mesh_dim_names=names)


def _shard(
    model: nn.Module,
    technique: Sharding,
    mesh: DeviceMesh,
    units: list[tuple[str, nn.Module]],
    keep: set[str],
) -> None:
    dtype = DTYPES.get(technique.param_dtype or "")
    reduce = DTYPES.get(technique.reduce_dtype or "")
    options: dict[str, Any] = dict(
        mesh=mesh,
        mp_policy=MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=reduce),
        # fake tensors cannot be pinned (the tracer's copy); real shards are, as FSDP2 defaults
        offload_policy=(
            CPUOffloadPolicy(pin_memory=not _on_fake(model))
            if technique.offload
            else OffloadPolicy()
        ),
    )
    deepest_first = sorted(units, key=lambda unit: -unit[0].count("."))
    for name, module in deepest_first:
        fully_shard(module, reshard_after_forward=name not in keep, **options)
    fully_shard(model, **options)


def _optimizer_change(
    before: dict[str, nn.Parameter], after: dict[str, nn.Parameter]
) -> Callable[[torch.optim.Optimizer], UndoFn]:
    """The user's optimizer, made to step the sharded parameters instead of the originals."""
    replaced = {id(before[name]): after[name] for name in before if name in after}
    sharded = {id(p) for p in after.values()}  # already sharded (the ids of freed originals
    # may have been reused by them)

    def change(optimizer: torch.optim.Optimizer) -> UndoFn:
        _check_optimizer(optimizer)
        saved = [list(group["params"]) for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["params"] = [
                p if id(p) in sharded else replaced.get(id(p), p) for p in group["params"]
            ]

        def undo() -> None:
            for group, params in zip(optimizer.param_groups, saved, strict=True):
                group["params"] = params

        return undo

    return change


@dataclasses.dataclass
class Agreement:
    """The three votes every rank casts while a sharded plan is applied (module docstring).

    Attributes:
        active: whether to vote (a real job of several ranks; not the tracer's fake one).
        cast: votes cast so far.
        error: this rank's failure, if any: every later vote says so.
    """

    active: bool
    cast: int = 0
    error: BaseException | None = None
    VOTES = ("check the plan", "fully_shard", "memfit.apply")

    @classmethod
    def of(cls, context: ApplyContext) -> Agreement:
        """The agreement ``memfit.apply`` put in ``context``; an inactive one otherwise."""
        found = context.agreement
        return found if isinstance(found, Agreement) else cls(active=False)

    def failed(self, error: BaseException) -> None:
        self.error = self.error or error

    def vote(self, stage: str) -> None:
        """Cast the vote for ``stage`` (and any skipped before it); raise if a rank failed."""
        while self.cast <= self.VOTES.index(stage):
            self._cast()

    def finish(self, error: BaseException | None) -> None:
        """Cast the remaining votes; raise ``ShardingError`` if any rank failed."""
        if error is not None:
            self.failed(error)
        self.vote(self.VOTES[-1])

    def _cast(self) -> None:
        stage = self.VOTES[self.cast]
        self.cast += 1
        if not self.active:
            return
        failed = _ranks_failed(self.error is not None)
        if not failed:
            return
        mine = f" This rank: {type(self.error).__name__}: {self.error}" if self.error else ""
        error = ShardingError(
            f"applying the sharded plan failed on rank(s) {failed} (at {stage}); every rank "
            f"stops here instead of waiting in a collective.{mine} See the failing ranks' "
            f"messages for the cause"
        )
        self.error = self.error or error
        while self.cast < len(self.VOTES):  # the others vote too: stay in step with them
            self.cast += 1
            _ranks_failed(True)
        raise error from (self.error if self.error is not error else None)


def _ranks_failed(failed: bool) -> list[int]:
    """All-reduce of one flag per rank; the ranks that failed."""
    backend = dist.get_backend()
    device = torch.device("cpu")
    if backend == "nccl" and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    flags = torch.zeros(dist.get_world_size(), dtype=torch.int32, device=device)
    flags[dist.get_rank()] = int(failed)
    dist.all_reduce(flags)
    return [rank for rank, flag in enumerate(flags.tolist()) if flag]


def in_a_job(model: nn.Module) -> bool:
    """Whether ``model`` is applied to on one rank of a real job of several ranks."""
    initialised = dist.is_available() and dist.is_initialized()
    return initialised and dist.get_world_size() > 1 and not _on_fake(model)
