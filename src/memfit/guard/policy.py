"""Which micro-batch size to try: remembered per input shape, halved on failure, grown back.

Rules (each change is logged by the guard in one line):

- **Per shape.** The size that worked is remembered per shape key (per-sample shapes and dtypes,
  ``split.shape_key``). An unseen key starts from the size of the closest seen key whose samples
  are at least as large (it fits, since a sample of the new key needs no more memory), or from
  the whole batch when there is none.
- **Shrink.** After a failure at ``m``: about ``m // 2``, moved down to a divisor of the batch if
  one lies within a quarter below (equal micro-batches), never below ``min_size``.
- **Grow.** After ``grow_after`` clean steps at one size, one attempt at twice the size (the
  whole batch when that is closer). If it fails, the old size comes back and the wait before
  the next attempt doubles, so a shape that does not fit costs ever fewer failed attempts.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from memfit.step.batch import per_sample_numel

__all__ = ["MicroBatchPolicy"]


@dataclass
class _Entry:
    size: int  # the micro-batch size that works
    clean_steps: int = 0  # consecutive clean steps at ``size``
    grow_after: int = 0  # clean steps before the next growth attempt
    trial_from: int | None = None  # set while ``size`` is a growth attempt: the size to go back to


class MicroBatchPolicy:
    """Micro-batch sizes per shape key.

    Args:
        min_size: the smallest micro-batch the guard may use.
        grow_after: clean steps before trying a larger size; 0 never grows.
    """

    def __init__(self, *, min_size: int = 1, grow_after: int = 50) -> None:
        self.min_size = min_size
        self.grow_after = grow_after
        self._entries: dict[Hashable, _Entry] = {}

    def known(self, key: Hashable) -> int | None:
        """The size remembered for ``key``, or None."""
        entry = self._entries.get(key)
        return entry.size if entry is not None else None

    def choose(self, key: Hashable, batch_size: int) -> int:
        """The micro-batch size for the next step of a batch of ``batch_size`` samples."""
        entry = self._entries.get(key)
        if entry is not None:
            return min(entry.size, batch_size)
        guess = self._from_neighbour(key)
        return batch_size if guess is None else max(self.min_size, min(guess, batch_size))

    def _from_neighbour(self, key: Hashable) -> int | None:
        if not isinstance(key, tuple) or not key:
            return None
        numel = per_sample_numel(key)
        dtypes = [dtype for _, dtype in key]
        best: tuple[int, int] | None = None  # (numel, size) of the smallest larger-or-equal key
        for other, entry in self._entries.items():
            if not isinstance(other, tuple) or [d for _, d in other] != dtypes:
                continue
            other_numel = per_sample_numel(other)
            if other_numel >= numel and (best is None or other_numel < best[0]):
                best = (other_numel, entry.size)
        return None if best is None else best[1]

    def shrink(self, key: Hashable, batch_size: int, failed: int) -> int | None:
        """The size to retry with after a failure at ``failed``; None when nothing is smaller.

        A failed growth attempt goes back to the size that worked before it.
        """
        entry = self._entries.get(key)
        if entry is not None and entry.trial_from is not None and failed == entry.size:
            previous = entry.trial_from
            entry.size, entry.trial_from, entry.clean_steps = previous, None, 0
            entry.grow_after = max(1, entry.grow_after) * 2
            return min(previous, batch_size)
        if failed <= self.min_size:
            return None
        target = max(self.min_size, failed // 2)
        for d in range(target, max(self.min_size, (3 * target) // 4) - 1, -1):
            if batch_size % d == 0:
                target = d
                break
        if entry is None:
            self._entries[key] = _Entry(size=target, grow_after=self.grow_after)
        else:
            entry.size, entry.clean_steps = target, 0
        return target

    def was_trial(self, key: Hashable) -> bool:
        """True while the current size of ``key`` is an unconfirmed growth attempt."""
        entry = self._entries.get(key)
        return entry is not None and entry.trial_from is not None

    def succeeded(self, key: Hashable, batch_size: int, size: int) -> int | None:
        """Record a clean step at ``size``.

        Returns:
            A larger size to try from the next step on, or None.
        """
        entry = self._entries.get(key)
        if entry is None:
            if size >= batch_size:
                return None  # never split: nothing to remember
            entry = self._entries[key] = _Entry(size=size, grow_after=self.grow_after)
        entry.trial_from = None
        entry.clean_steps += 1
        if self.grow_after <= 0 or size >= batch_size or entry.clean_steps < entry.grow_after:
            return None
        bigger = size * 2 if size * 2 <= batch_size * 3 // 4 else batch_size
        entry.trial_from, entry.size, entry.clean_steps = size, bigger, 0
        return bigger

    def soften(self, key: Hashable, batch_size: int, size: int) -> int | None:
        """Shrink without a failure (allocator thrash); None when nothing is smaller."""
        if size <= self.min_size:
            return None
        entry = self._entries.get(key)
        if entry is not None:
            entry.trial_from = None
        return self.shrink(key, batch_size, size)
