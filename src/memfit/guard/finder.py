"""``find_batch_size``: the largest batch that fits, predicted, then confirmed by real steps."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.guard.errors import OOMUnrecoverableError
from memfit.guard.oom import OOMInfo, parse_oom_message
from memfit.guard.predict import estimate_largest_batch
from memfit.guard.state import preserved_state

__all__ = ["find_batch_size", "BatchSizeResult", "Trial"]

log = logging.getLogger("memfit.guard")


@dataclass(frozen=True)
class Trial:
    """One batch size tried: ``steps_per_trial`` real steps, or the OOM that stopped them."""

    batch_size: int
    fits: bool
    peak_allocated_bytes: int | None
    peak_reserved_bytes: int | None
    seconds: float
    oom: OOMInfo | None = None


@dataclass(frozen=True)
class BatchSizeResult:
    """What ``find_batch_size`` found.

    Attributes:
        batch_size: the largest batch that ran ``steps_per_trial`` steps, less ``margin``.
        largest_fitting: the largest batch that ran, before ``margin``.
        smallest_failing: the smallest batch that ran out of memory (None if none did).
        predicted: the estimator's (or ``predict``'s) guess, None without one.
        trials: every batch size tried, in order.
        seconds: wall time of the search.
    """

    batch_size: int
    largest_fitting: int
    smallest_failing: int | None
    predicted: int | None
    trials: tuple[Trial, ...] = field(default_factory=tuple)
    seconds: float = 0.0


def _default_step(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, loss_fn: Callable[..., Any] | None
) -> Callable[[Any], Any]:
    def step(batch: Any) -> None:
        if isinstance(batch, Mapping):
            out = model(**batch)
        elif isinstance(batch, (tuple, list)):
            out = model(*batch)
        else:
            out = model(batch)
        if loss_fn is not None:
            loss = loss_fn(out, batch)
        elif getattr(out, "loss", None) is not None:
            loss = out.loss
        elif isinstance(out, torch.Tensor):
            loss = out.float().mean()
        else:
            raise InvalidInputError(
                f"cannot take a loss from a model output of type {type(out).__name__}; pass "
                f"loss_fn=lambda output, batch: ... returning a scalar, or step_fn=..."
            )
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            model.zero_grad(set_to_none=True)

    return step


class _Prober:
    def __init__(self, step: Callable[[Any], Any], make_batch: Callable[[int], Any], steps: int):
        self.step, self.make_batch, self.steps = step, make_batch, steps
        self.trials: list[Trial] = []
        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()

    def fits(self, batch_size: int) -> bool:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        message = None
        try:
            batch = self.make_batch(batch_size)
            for _ in range(self.steps):
                self.step(batch)
            del batch
        except torch.OutOfMemoryError as exc:
            message = str(exc)
        # recovery outside the except block (PyTorch FAQ)
        if self.cuda:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() if self.cuda else None
        reserved = torch.cuda.max_memory_reserved() if self.cuda else None
        oom = parse_oom_message(message) if message is not None else None
        trial = Trial(batch_size, oom is None, peak, reserved, time.perf_counter() - started, oom)
        self.trials.append(trial)
        log.info(
            "memfit.guard: batch size %d %s",
            batch_size,
            "fits" if oom is None else f"does not fit ({oom.summary()})",
        )
        return oom is None


def _down(value: int, multiple: int) -> int:
    return max(multiple, value // multiple * multiple)


def find_batch_size(
    model: nn.Module,
    make_batch: Callable[[int], Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step_fn: Callable[[Any], Any] | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    grad_scaler: Any | None = None,
    start: int | None = None,
    predict: Callable[[], int | None] | None = None,
    use_estimate: bool = True,
    estimate_kwargs: Mapping[str, Any] | None = None,
    max_batch_size: int = 65536,
    multiple_of: int = 1,
    steps_per_trial: int = 2,
    margin: float = 0.0,
) -> BatchSizeResult:
    """Find the largest batch size whose training step fits in device memory.

    A first guess comes from ``start``, else ``predict()``, else ``memfit.estimate`` (fake
    tensors, no memory; skipped cleanly when it is unavailable or fails), else 1. Real steps
    then confirm it: doubling while it fits (halving while it does not), then bisecting between
    the largest size that fitted and the smallest that did not. Each trial runs
    ``steps_per_trial`` full steps (the optimizer's state exists from the first step on, as in
    training). Afterwards weights, buffers, gradients, optimizer and grad-scaler state, train/eval
    modes and the random-number generators are exactly as before.

    Args:
        model: the model, on its training device.
        make_batch: ``make_batch(batch_size) -> batch`` on the training device.
        optimizer: stepped in each trial (its state memory counts); None for forward and backward.
        step_fn: ``step_fn(batch)`` running one whole training step; default ``model(**batch)``
            (or ``model(batch)``), ``loss_fn`` or ``output.loss``, backward, optimizer step.
        loss_fn: ``(output, batch) -> loss`` for the default step.
        grad_scaler: restored afterwards when ``step_fn`` uses one.
        start: first size to try (skips the prediction).
        predict: ``predict() -> guess``, e.g. from your own estimator.
        use_estimate: ask ``memfit.estimate`` for a guess when neither ``start`` nor ``predict``
            is given. ``estimate_kwargs`` go to it (default ``precision="fp32"``).
        max_batch_size: never try more.
        multiple_of: only sizes that are multiples of this (e.g. 8 for tensor cores).
        steps_per_trial: real steps per size (2 catches the optimizer state of the first step).
        margin: fraction taken off the result for head-room (0.05 leaves 5 %).

    Returns:
        A ``BatchSizeResult`` with the size and every trial (peak memory, time, OOM figures).

    Raises:
        InvalidInputError: bad arguments.
        OOMUnrecoverableError: even ``multiple_of`` samples do not fit.

    Known limitations:
        One process: under DDP run it before wrapping the model (trials of different sizes on
        different ranks would desynchronise collectives); the result is the minimum over ranks
        only if you all-reduce it yourself. Memory that grows over a long run (fragmentation,
        leaks, longer sequences later) is not seen in a few steps: keep a ``margin`` or run under
        ``OOMGuard``. Host memory holds a copy of the model and optimizer state meanwhile.
    """
    _check_arguments(make_batch, max_batch_size, multiple_of, steps_per_trial, margin)
    started = time.perf_counter()
    step = step_fn if step_fn is not None else _default_step(model, optimizer, loss_fn)
    guess = _Guess(start, predict, use_estimate, estimate_kwargs)
    predicted = guess.first(model, make_batch, optimizer)
    first = _down(min(max(predicted or 1, 1), max_batch_size), multiple_of)
    prober = _Prober(step, make_batch, steps_per_trial)
    with preserved_state(model, optimizer, grad_scaler):
        good, bad = _search(prober, first, max_batch_size, multiple_of)
    if good is None:
        raise _nothing_fits(prober, multiple_of)
    result = _down(int(good * (1.0 - margin)), multiple_of) if margin else good
    return BatchSizeResult(
        batch_size=result,
        largest_fitting=good,
        smallest_failing=bad,
        predicted=predicted,
        trials=tuple(prober.trials),
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class _Guess:
    """Where the first size to try comes from: ``start``, else ``predict()``, else the estimator."""

    start: int | None
    predict: Callable[[], int | None] | None
    use_estimate: bool
    estimate_kwargs: Mapping[str, Any] | None

    def first(
        self,
        model: nn.Module,
        make_batch: Callable[[int], Any],
        optimizer: torch.optim.Optimizer | None,
    ) -> int | None:
        """The first guess, or None when there is none."""
        guess = self.start
        if guess is None and self.predict is not None:
            guess = self.predict()
        if guess is None and self.use_estimate:
            guess = estimate_largest_batch(model, make_batch, optimizer, self.estimate_kwargs)
        return guess


def _check_arguments(
    make_batch: Any, max_batch_size: int, multiple_of: int, steps_per_trial: int, margin: float
) -> None:
    """Raise InvalidInputError for a size, a margin or a make_batch that cannot be used."""
    for name, value, low in (
        ("max_batch_size", max_batch_size, 1),
        ("multiple_of", multiple_of, 1),
        ("steps_per_trial", steps_per_trial, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{name}={value!r} must be an integer >= {low}")
    if not 0.0 <= margin < 1.0:
        raise InvalidInputError(f"margin={margin!r} must be in [0, 1), e.g. 0.05 for 5 % head-room")
    if not callable(make_batch):
        raise InvalidInputError(
            f"make_batch={make_batch!r} is not callable; pass make_batch(batch_size) -> batch"
        )


def _nothing_fits(prober: _Prober, multiple: int) -> OOMUnrecoverableError:
    """The error when even the smallest size ran out of memory, with the last OOM's figures."""
    last = prober.trials[-1].oom
    return OOMUnrecoverableError(
        f"even a batch of {multiple} does not fit "
        f"({last.summary() if last else 'no figures'}); the model and optimizer are as "
        f"before. Make one sample fit first: activation checkpointing (memfit.plan), "
        f"shorter sequences, lower precision",
        oom=last,
        micro_batch_size=multiple,
        phase="trial step",
    )


def _search(
    prober: _Prober, first: int, limit: int, multiple: int
) -> tuple[int | None, int | None]:
    """Doubling (or halving) from ``first``, then bisection: (largest fitting, smallest not)."""
    good: int | None = None
    bad: int | None = None
    size = first
    if prober.fits(size):
        good = size
        while size < limit:
            size = min(size * 2, _down(limit, multiple))
            if size <= good:
                break
            if not prober.fits(size):
                bad = size
                break
            good = size
    else:
        bad = size
        while size > multiple:
            size = _down(size // 2, multiple)
            if prober.fits(size):
                good = size
                break
            bad = size
    if good is None:
        return None, bad
    while bad is not None and bad - good > multiple:
        middle = _down((good + bad) // 2, multiple)
        if middle <= good:
            break
        if prober.fits(middle):
            good = middle
        else:
            bad = middle
    return good, bad
