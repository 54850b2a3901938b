"""Errors the guard raises: each names the value, what is allowed and the fix."""

from __future__ import annotations

from memfit.errors import MemfitError, UnsplittableBatchError

__all__ = ["UnsplittableBatchError", "OOMUnrecoverableError", "StateRestoreError"]


class OOMUnrecoverableError(MemfitError):
    """Out of memory even at the smallest allowed micro-batch.

    The model, optimizer and gradient-scaler state are back to what they were before the step,
    so the caller may change something (sequence length, checkpointing) and call again.

    Attributes:
        oom: the parsed figures of the last out-of-memory error (``OOMInfo``).
        micro_batch_size: the micro-batch size that still did not fit.
        phase: where the last attempt failed ("forward/backward", "optimizer step").
    """

    def __init__(self, message: str, *, oom: object, micro_batch_size: int, phase: str) -> None:
        super().__init__(message)
        self.oom = oom
        self.micro_batch_size = micro_batch_size
        self.phase = phase


class StateRestoreError(MemfitError):
    """A failed step changed state that the guard had no copy of, so it cannot retry exactly."""
