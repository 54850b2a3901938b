"""What the guard did, as numbers a training loop can log."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from memfit.guard.oom import OOMInfo

__all__ = ["GuardMetrics"]


@dataclass
class GuardMetrics:
    """Counters of an ``OOMGuard``, updated after every guarded step.

    Attributes:
        steps: guarded steps completed.
        ooms: out-of-memory errors caught on this rank (``step_ooms`` of them in
            ``optimizer.step()``).
        step_ooms: out-of-memory errors inside ``optimizer.step()``.
        step_retries: times ``optimizer.step()`` was run again on the same gradients.
        retries: attempts re-run after a failure (one step can need several).
        shrinks: micro-batch size reductions (after an OOM or allocator thrash).
        grows: growth attempts started.
        failed_grows: growth attempts that ran out of memory and went back.
        thrash_events: times ``num_alloc_retries`` grew over ``thrash_steps`` consecutive steps.
        peer_waits: extra vote rounds this rank waited for other ranks' retries.
        micro_batch_size: micro-batch size of the last step (None before the first).
        num_micro_batches: micro-batches in the last step.
        recovery_s: wall time spent in failed attempts and their clean-up, in total.
        snapshot_bytes: memory the last pre-step snapshot holds (device and host).
        lean_optimizer: True once the optimizer step runs with ``foreach=False`` (after the step
            failed twice as configured and fitted per parameter).
        last_oom: figures of the last out-of-memory error, or None.
    """

    steps: int = 0
    ooms: int = 0
    step_ooms: int = 0
    step_retries: int = 0
    retries: int = 0
    shrinks: int = 0
    grows: int = 0
    failed_grows: int = 0
    thrash_events: int = 0
    peer_waits: int = 0
    micro_batch_size: int | None = None
    num_micro_batches: int = 1
    recovery_s: float = 0.0
    snapshot_bytes: int = 0
    lean_optimizer: bool = False
    last_oom: OOMInfo | None = field(default=None, repr=False)

    def as_dict(self, prefix: str = "memfit/") -> dict[str, float]:
        """Flat numbers for a metrics logger: ``{"memfit/micro_batch_size": 8.0, ...}``."""
        out: dict[str, float] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "last_oom" or value is None:
                continue
            out[prefix + f.name] = float(value)
        return out
