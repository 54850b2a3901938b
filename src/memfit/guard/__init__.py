"""Keep training alive when memory runs short: OOM retry, batch-size finder, leak watch.

``OOMGuard`` re-runs an out-of-memory step on the same batch in micro-batches with the same
update; ``find_batch_size`` finds the largest batch that fits by real steps; ``LeakWatch`` names
the tensors that make memory grow from step to step.
"""

from __future__ import annotations

from memfit.guard.distributed import PeerAbortError
from memfit.guard.errors import OOMUnrecoverableError, StateRestoreError, UnsplittableBatchError
from memfit.guard.finder import BatchSizeResult, Trial, find_batch_size
from memfit.guard.guard import OOMGuard
from memfit.guard.history import record_memory_history
from memfit.guard.leak import Culprit, LeakReport, LeakWatch
from memfit.guard.metrics import GuardMetrics
from memfit.guard.oom import OOMInfo, parse_oom_message
from memfit.guard.protocol import MicroBatchStep
from memfit.step.batch import Splitter, batch_size_of, micro_batch_sizes, split_batch

__all__ = [
    "OOMGuard",
    "find_batch_size",
    "BatchSizeResult",
    "Trial",
    "LeakWatch",
    "LeakReport",
    "Culprit",
    "GuardMetrics",
    "MicroBatchStep",
    "OOMInfo",
    "parse_oom_message",
    "OOMUnrecoverableError",
    "StateRestoreError",
    "UnsplittableBatchError",
    "PeerAbortError",
    "Splitter",
    "batch_size_of",
    "split_batch",
    "micro_batch_sizes",
    "record_memory_history",
]
