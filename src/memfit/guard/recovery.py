"""Between attempts: free, restore, pick the next size. Between steps: grow, watch for thrash.

Every change is one log line on the ``memfit.guard`` logger and a counter in ``GuardMetrics``.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Hashable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from memfit.guard.errors import OOMUnrecoverableError
from memfit.guard.metrics import GuardMetrics
from memfit.guard.oom import OOMInfo
from memfit.guard.options import GuardOptions
from memfit.guard.policy import MicroBatchPolicy
from memfit.guard.snapshot import StepSnapshot
from memfit.guard.step_retry import optimizer_figures
from memfit.step.batch import micro_batch_sizes

__all__ = ["Recovery", "free_memory"]

log = logging.getLogger("memfit.guard")


def free_memory() -> None:
    """Collect reference cycles and return PyTorch's cached, unused device blocks to the driver.

    Only with CUDA initialised: a full ``gc.collect()`` takes 0.1 s or more in a process that
    imported torch, which is noise next to a GPU step but not next to a CPU test.
    """
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def _layout(n: int, m: int) -> str:
    sizes = micro_batch_sizes(n, m)
    text = f"{n // m} x {m}" if n >= m else f"1 x {n}"
    return text + (f" + {sizes[-1]}" if n % m and n > m else "")


class Recovery:
    """Decisions between attempts and between steps.

    Args:
        options: the guard's settings.
        metrics: the guard's counters (updated here).
        params: the trained parameters (their device decides where thrash is read).
        optimizer: the optimizer (its figures go into the messages).
    """

    def __init__(
        self,
        options: GuardOptions,
        metrics: GuardMetrics,
        params: list[nn.Parameter],
        optimizer: torch.optim.Optimizer,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.optimizer = optimizer
        self.policy = MicroBatchPolicy(
            min_size=options.min_micro_batch_size, grow_after=options.grow_after
        )
        cuda = [p.device for p in params if p.device.type == "cuda"]
        self._device = cuda[0] if cuda else None
        self._last_retries: int | None = None
        self._thrash_run = 0
        self.read_alloc_retries: Callable[[], int | None] = self._cuda_alloc_retries

    def _cuda_alloc_retries(self) -> int | None:
        if self._device is None:
            return None
        stats = torch.cuda.memory_stats_as_nested_dict(self._device)
        return int(stats.get("num_alloc_retries", 0))

    # ---- after a failure ----------------------------------------------------------------

    def recover(
        self, snapshot: StepSnapshot, oom: OOMInfo, phase: str, key: Hashable, n: int, m: int
    ) -> int:
        """Clean up after a failed attempt; return the micro-batch size for the next one.

        Raises:
            OOMUnrecoverableError: nothing smaller is allowed (state restored first).
            StateRestoreError: the attempt changed state the snapshot cannot restore.
        """
        self.metrics.ooms += 1
        self.metrics.last_oom = oom
        self._dump_snapshot()
        free_memory()
        for warning in snapshot.restore():
            log.warning("memfit.guard: %s", warning)
        self._last_retries, self._thrash_run = None, 0
        if phase == "optimizer step":  # not retried in place (retrying_step): nor by shrinking
            raise OOMUnrecoverableError(
                f"out of memory in optimizer.step() ({oom.summary()}; "
                f"{optimizer_figures(self.optimizer)}); "
                f"gradients, buffers and optimizer state are as before the step. Smaller "
                f"micro-batches do not help the step: use a fused step, low-bit optimizer state "
                f"or optimizer state offloaded to the CPU (`memfit plan` names what fits)",
                oom=oom,
                micro_batch_size=m,
                phase=phase,
            )
        trial = self.policy.was_trial(key)
        new = self.policy.shrink(key, n, m)
        if new is None:
            raise OOMUnrecoverableError(
                f"out of memory in {phase} even with micro-batches of {m} sample(s) "
                f"({oom.summary()}); gradients, buffers and optimizer state are as before the "
                f"step. Make one sample fit: shorter sequences, activation checkpointing "
                f"(memfit.plan), lower precision, or a GPU with more memory",
                oom=oom,
                micro_batch_size=m,
                phase=phase,
            )
        if trial:
            self.metrics.failed_grows += 1
            log.info(
                "memfit.guard: growth to micro-batch %d failed (%s); back to %s, next try later",
                m,
                oom.summary(),
                _layout(n, new),
            )
        else:
            self.metrics.shrinks += 1
            log.warning(
                "memfit.guard: OOM in %s with micro-batch %d of batch %d (%s); retrying the "
                "same batch as %s",
                phase,
                m,
                n,
                oom.summary(),
                _layout(n, new),
            )
        return new

    def _dump_snapshot(self) -> None:
        folder = self.options.dump_snapshot_dir
        if folder is None or not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return
        rank = f"_rank{dist.get_rank()}" if dist.is_available() and dist.is_initialized() else ""
        path = Path(folder) / f"memfit_oom_{self.metrics.ooms:04d}{rank}.pickle"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.cuda.memory._dump_snapshot(str(path))
        except Exception as exc:  # a report must never break the recovery
            log.warning("memfit.guard: could not write the memory snapshot %s: %s", path, exc)
            return
        log.warning(
            "memfit.guard: memory snapshot written to %s (open it at pytorch.org/memory_viz)", path
        )

    # ---- after a clean step -------------------------------------------------------------

    def after_success(self, key: Hashable, n: int, m: int) -> None:
        """Count the step, maybe start a growth attempt, and look for allocator thrash."""
        self.metrics.steps += 1
        grow_after = self.policy.grow_after
        bigger = self.policy.succeeded(key, n, m)
        if bigger is not None:
            self.metrics.grows += 1
            log.info(
                "memfit.guard: clean steps with micro-batch %d of batch %d (>= %d); trying %s",
                m,
                n,
                grow_after,
                _layout(n, bigger),
            )
        self._check_thrash(key, n, m)

    def _check_thrash(self, key: Hashable, n: int, m: int) -> None:
        retries = self.read_alloc_retries()
        if retries is None:
            return
        grew = self._last_retries is not None and retries > self._last_retries
        self._thrash_run = self._thrash_run + 1 if grew else 0
        self._last_retries = retries
        if self._thrash_run < self.options.thrash_steps:
            return
        self._thrash_run = 0
        self.metrics.thrash_events += 1
        if self.options.on_thrash == "ignore":
            return
        what = (
            f"num_alloc_retries grew in {self.options.thrash_steps} consecutive steps (now "
            f"{retries}): allocations failed and PyTorch emptied its cache to retry them"
        )
        smaller = self.policy.soften(key, n, m) if self.options.on_thrash == "shrink" else None
        if smaller is None:
            log.warning(
                "memfit.guard: allocator thrash: %s; a smaller micro-batch or "
                "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True may help",
                what,
            )
            return
        self.metrics.shrinks += 1
        log.warning(
            "memfit.guard: allocator thrash: %s; micro-batch %d -> %d from the next step",
            what,
            m,
            smaller,
        )
