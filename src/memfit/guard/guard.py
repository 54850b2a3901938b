"""``OOMGuard``: survive an out-of-memory error in a training step without losing a sample."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.guard.discover import find_optimizer_and_model
from memfit.guard.distributed import (
    ABORT,
    FAILED,
    PeerAbortError,
    Voter,
    all_reduce_gradients,
    is_distributed,
)
from memfit.guard.intercept import FunctionRunner, observe_zero_grad
from memfit.guard.metrics import GuardMetrics
from memfit.guard.oom import OOMInfo, parse_oom_message
from memfit.guard.options import GuardOptions
from memfit.guard.protocol import MicroBatchStep, is_micro_batch_step
from memfit.guard.recovery import Recovery, free_memory
from memfit.guard.snapshot import StepSnapshot
from memfit.guard.step_retry import per_parameter, retrying_step
from memfit.step.batch import batch_size_of, micro_batch_sizes, shape_key, split_batch

__all__ = ["OOMGuard"]

log = logging.getLogger("memfit.guard")


@dataclass(frozen=True)
class _Failure:
    phase: str
    oom: OOMInfo


class OOMGuard:
    """Run a training step; on out-of-memory, re-run the same batch in micro-batches.

    On ``torch.OutOfMemoryError`` (caught by type) the guard leaves the ``except`` block, frees
    what the failed attempt held (PyTorch FAQ: the exception keeps the failing frames alive),
    restores gradients, buffers, optimizer and grad-scaler state to their values before the step,
    and runs the same batch again cut into micro-batches with gradient accumulation, each loss
    weighted ``n_i / N``. No sample is skipped and no update applied twice. The size that worked
    is remembered per input shape and grown back after ``grow_after`` clean steps.

    An out-of-memory error inside ``optimizer.step()`` is not helped by smaller micro-batches:
    the gradients are complete by then, so the guard frees memory and runs the step itself
    again, then per parameter (``foreach=False``), and only then raises
    ``OOMUnrecoverableError`` with the optimizer's figures (``memfit.guard.step_retry``).

    Args:
        step: a ``MicroBatchStep`` (memfit's ``TrainStep``: the guard drives its micro-batches
            directly), or a function ``step_fn(batch)`` doing forward, backward and the optimizer
            step itself (see ``memfit.guard.intercept`` for how it is split).
        optimizer: the optimizer ``step_fn`` steps (a ``MicroBatchStep`` brings its own). When
            None, the one optimizer ``step_fn`` refers to (a global, a closure variable, an
            attribute of the object it is bound to: ``memfit.guard.discover``).
        model: the model ``step_fn`` trains: lets the guard restore its buffers, intercept its
            ``zero_grad`` and use ``no_sync`` under DDP. When None with no optimizer given, the
            module ``step_fn`` refers to that holds the optimizer's parameters.
        grad_scaler: a ``torch.amp.GradScaler`` whose state is restored after a failure.
        min_micro_batch_size: the smallest micro-batch; below it the guard raises
            ``OOMUnrecoverableError`` (with the OOM's figures) instead of splitting further.
        grow_after: clean steps at one size before trying twice that size; 0 never grows.
        splitter: ``fn(batch, sizes) -> micro-batches`` for batches that are not trees of
            tensors, dicts, lists and tuples (the batch must then have ``len()``).
        loss_reduction: "mean" (the loss is a mean over samples: micro-batch losses weighted
            ``n_i / N``) or "sum" (a sum, or already normalised by a global count: weight 1).
        weight_fn: with "mean", ``fn(micro_batch) -> weight`` replacing ``n_i``, e.g. the number
            of labelled tokens when the loss is a mean over tokens rather than sequences.
        snapshot_device: where copies of non-zero pre-step gradients go: "cpu" or "device".
        optimizer_copy: "none", "cpu" or "device": keep a full copy of parameters and optimizer
            state each step, so that a failure in the middle of ``optimizer.step()`` can be
            undone (without it, such a failure raises ``StateRestoreError``).
        thrash_steps: consecutive steps in which ``num_alloc_retries`` grew that count as thrash.
        on_thrash: "shrink" (halve the micro-batch, as after an OOM), "warn" or "ignore".
        dump_snapshot_dir: on OOM, write ``torch.cuda.memory._dump_snapshot`` there (useful
            inside ``memfit.guard.record_memory_history()``; open it at pytorch.org/memory_viz).
        distributed: "auto" (vote when a process group of more than one rank is initialised),
            True or False.

    Attributes:
        metrics: a ``GuardMetrics`` (``guard.metrics.as_dict()`` for loggers).

    Raises:
        InvalidInputError: ``step`` is not callable, no optimizer for a function, a setting out
            of range; at call time, a batch it cannot split or smaller than
            ``min_micro_batch_size``.

    Example:
        >>> guarded = OOMGuard(train_step, optimizer=opt, model=model)  # doctest: +SKIP
        >>> for batch in loader:  # doctest: +SKIP
        ...     loss = guarded(batch)

    Known limitations:
        Exact only when the loss is a mean over samples (or a sum, with ``loss_reduction="sum"``)
        and samples do not interact: BatchNorm statistics, in-batch negatives and dropout masks
        differ between a batch and its micro-batches. Out-of-memory errors that do not raise
        ``torch.OutOfMemoryError`` (MPS raises a plain ``RuntimeError``) are not caught. Under
        DDP or FSDP, a rank that runs out of memory inside a collective cannot be helped: the
        other ranks wait in that collective; the guard puts its own vote before any collective
        it controls and reduces DDP gradients itself after it, but FSDP and collectives inside
        ``step_fn`` before backward ends are the user's. An OOM after every rank voted (in
        clipping under several ranks) is re-raised, not retried; one in ``optimizer.step()``
        is retried on this rank alone (the step of a plain optimizer has no collective).
    """

    def __init__(
        self,
        step: MicroBatchStep | Callable[[Any], Any],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        model: nn.Module | None = None,
        grad_scaler: Any | None = None,
        **options: Any,
    ) -> None:
        known = {f.name for f in dataclasses.fields(GuardOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInputError(
                f"OOMGuard has no option(s) {unknown}; its options are: "
                f"{', '.join(sorted(known))} (and optimizer, model, grad_scaler)"
            )
        self.options = GuardOptions(**options)
        self._protocol = is_micro_batch_step(step)
        if getattr(step, "host_optimizer", None) is not None:
            raise InvalidInputError(
                "OOMGuard cannot guard a step whose optimizer runs on the host (OffloadOptimizer): "
                "its updates start during backward, so a retried slice would step the weights "
                "again; guard a plan without 'offload_optimizer', or run this one unguarded"
            )
        if self._protocol:
            model = getattr(step, "model", model)
            optimizer = getattr(step, "optimizer", optimizer)
            grad_scaler = getattr(step, "grad_scaler", grad_scaler)
        elif not callable(step):
            raise InvalidInputError(
                f"step {step!r} of type {type(step).__name__} is not callable; pass a function "
                f"step_fn(batch) that runs forward, backward and optimizer.step(), or an object "
                f"with forward_backward(batch, *, loss_scale) and optimizer_step() "
                f"(memfit.guard.MicroBatchStep)"
            )
        if optimizer is None and not self._protocol:  # OOMGuard(step_fn): what it refers to
            found, found_model = find_optimizer_and_model(step)  # type: ignore[arg-type]
            optimizer, model = found, model if model is not None else found_model
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise InvalidInputError(
                f"optimizer={optimizer!r} is not a torch.optim.Optimizer; pass the optimizer "
                f"that step_fn steps: OOMGuard(step_fn, optimizer=opt, model=model)"
            )
        self.step, self.optimizer, self.model = step, optimizer, model
        params = list(model.parameters()) if model is not None else []
        seen = {id(p) for p in params}
        params += [p for g in optimizer.param_groups for p in g["params"] if id(p) not in seen]
        self._params: list[nn.Parameter] = params
        self._snapshot = StepSnapshot(
            params,
            optimizer=optimizer,
            model=model,
            grad_scaler=grad_scaler,
            grads_to=self.options.snapshot_device,
            optimizer_copy=self.options.optimizer_copy,
        )
        self.metrics = GuardMetrics()
        self._recovery = Recovery(self.options, self.metrics, self._params, optimizer)
        self._voter: Voter | None = None
        self._voted = False
        self._stepped = False
        self._phase = "forward/backward"
        self._runner: FunctionRunner | None = None
        if not self._protocol:
            self._runner = FunctionRunner(
                step,  # type: ignore[arg-type]
                optimizer=optimizer,
                model=model,
                params=params,
                after_backward=None,
                on_zero_grad=self._snapshot.mark_grads_clear,
            )

    # ---- one guarded step ---------------------------------------------------------------

    def __call__(self, batch: Any) -> Any:
        """Run the step on ``batch``, splitting it as often as needed.

        Returns what the step returned: a ``MicroBatchStep``'s loss over the whole batch; a
        function's return value on the last micro-batch when the batch was split.
        """
        n = batch_size_of(batch, splitter=self.options.splitter)
        if self.options.min_micro_batch_size > n:
            raise InvalidInputError(
                f"min_micro_batch_size={self.options.min_micro_batch_size} is larger than this "
                f"batch of {n} samples; pass min_micro_batch_size={n} or less (1 lets the guard "
                f"split down to single samples)"
            )
        self._sync_setup()
        key: Hashable = shape_key(batch) if self.options.splitter is None else "custom"
        m = self._recovery.policy.choose(key, n)
        self._snapshot.take()
        self.metrics.snapshot_bytes = self._snapshot.nbytes
        started = time.perf_counter()
        try:
            while True:
                failure, result = self._attempt(batch, n, m)
                if failure is None:
                    break
                result = None
                try:
                    m = self._recovery.recover(
                        self._snapshot, failure.oom, failure.phase, key, n, m
                    )
                except BaseException:
                    if self._voter is not None:
                        self._voter.vote(ABORT)  # the others are waiting for this rank's retry
                    raise
                self.metrics.recovery_s += time.perf_counter() - started
                self.metrics.retries += 1
                started = time.perf_counter()
            self._recovery.after_success(key, n, m)
            self._snapshot.learn_buffers()
            return result
        finally:
            self._snapshot.release()

    def _sync_setup(self) -> None:
        wanted = self.options.distributed
        active = is_distributed() if wanted == "auto" else bool(wanted)
        if active and self._voter is None:
            self._voter = Voter()
        if self._runner is not None:
            self._runner.after_backward = self._after_backward if active else None

    def _weights(self, parts: list[Any], sizes: list[int], n: int) -> list[float]:
        if self.options.loss_reduction == "sum":
            return [1.0] * len(parts)
        if len(parts) == 1:
            return [1.0]
        if self.options.weight_fn is None:
            return [size / n for size in sizes]
        raw = [float(self.options.weight_fn(part)) for part in parts]
        total = sum(raw)
        return [w / total for w in raw] if total > 0 else [size / n for size in sizes]

    def _attempt(self, batch: Any, n: int, m: int) -> tuple[_Failure | None, Any]:
        sizes = micro_batch_sizes(n, m)
        parts = split_batch(batch, sizes, splitter=self.options.splitter)
        weights = self._weights(parts, sizes, n)
        self.metrics.micro_batch_size, self.metrics.num_micro_batches = m, len(sizes)
        self._voted = self._stepped = False
        failure: _Failure | None = None
        result: Any = None
        self._phase = "forward/backward"
        with (
            self._lean_optimizer(),
            retrying_step(self.optimizer, self._snapshot, self.metrics, free_memory),
            self._track_step(),
            self._watch_zero_grad(),
        ):
            try:
                if self._protocol:
                    result = self._run_protocol(parts, weights)
                else:
                    assert self._runner is not None
                    result = self._runner.run(parts, weights)
            except torch.OutOfMemoryError as exc:
                phase = self._runner.phase if self._runner is not None else self._phase
                if self._stepped or (self._voted and self._voter is not None):
                    raise  # the update (or every rank's vote) is done: retrying would desync
                failure = _Failure(phase, parse_oom_message(str(exc)))
            except BaseException as exc:
                if not self._stepped:
                    self._restore_quietly()
                if self._voter is not None and not self._voted:
                    if not isinstance(exc, PeerAbortError):
                        self._voter.vote(ABORT)
                raise
        if failure is not None and self._voter is not None:
            self._voter.vote(FAILED)
        elif failure is None and self._voter is not None and not self._voted:
            self._wait_for_peers()
        return failure, result

    def _run_protocol(self, parts: list[Any], weights: list[float]) -> Any:
        step: Any = self.step
        total: torch.Tensor | None = None
        for part, weight in zip(parts, weights, strict=True):
            loss = step.forward_backward(part, loss_scale=weight)
            if isinstance(loss, torch.Tensor):
                loss = loss.detach() * weight if len(parts) > 1 else loss.detach()
                total = loss if total is None else total + loss
        if self._voter is not None:
            self._wait_for_peers()
        self._phase = "optimizer step"
        step.optimizer_step()
        return total

    def _wait_for_peers(self) -> None:
        assert self._voter is not None
        while (vote := self._voter.vote(0)) == FAILED:
            self.metrics.peer_waits += 1
        self._voted = True
        if vote == ABORT:
            raise PeerAbortError(
                "another rank could not recover from out-of-memory (or raised) during this "
                "step; this rank stops too rather than wait forever. See that rank's error"
            )

    def _after_backward(self) -> None:
        self._wait_for_peers()
        if isinstance(self.model, nn.parallel.DistributedDataParallel):
            all_reduce_gradients(self._params)

    def _restore_quietly(self) -> None:
        try:
            self._snapshot.restore()
        except Exception as exc:  # the original error matters more than this one
            log.warning("could not restore the state before the failed step: %s", exc)

    @contextlib.contextmanager
    def _track_step(self) -> Iterator[None]:
        def post(*_: Any) -> None:
            self._stepped = True

        handle = self.optimizer.register_step_post_hook(post)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def _watch_zero_grad(self) -> Iterator[None]:
        """On the protocol path: note when the step zeroes gradients (the snapshot is then free)."""
        if not self._protocol:
            yield  # the function runner intercepts zero_grad itself
            return
        with contextlib.ExitStack() as stack:
            for owner in (self.optimizer, self.model):
                if owner is not None:
                    stack.enter_context(observe_zero_grad(owner, self._snapshot.mark_grads_clear))
            yield

    @contextlib.contextmanager
    def _lean_optimizer(self) -> Iterator[None]:
        if not self.metrics.lean_optimizer:
            yield
            return
        with per_parameter(self.optimizer):
            yield
