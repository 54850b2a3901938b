"""The micro-batch size policy: how far to shrink after an OOM, when to grow back."""

from __future__ import annotations

import torch

from memfit.guard.policy import MicroBatchPolicy


def test_shrink_halves_and_prefers_a_divisor() -> None:
    policy = MicroBatchPolicy(min_size=1, grow_after=0)
    assert policy.shrink("k", 24, 24) == 12
    assert policy.shrink("k", 24, 12) == 6
    assert policy.shrink("k", 30, 30) == 15
    assert policy.shrink("k", 30, 15) == 6  # 7 is not a divisor of 30; 6 is within a quarter
    assert policy.shrink("p", 31, 31) == 15  # a prime: no divisor nearby, a remainder instead
    assert policy.shrink("k", 30, 1) is None
    floor = MicroBatchPolicy(min_size=4)
    assert floor.shrink("k", 32, 6) == 4 and floor.shrink("k", 32, 4) is None


def test_growth_after_clean_steps_and_backoff_after_a_failed_growth() -> None:
    policy = MicroBatchPolicy(grow_after=2)
    assert policy.shrink("k", 16, 16) == 8
    assert policy.succeeded("k", 16, 8) is None
    assert policy.succeeded("k", 16, 8) == 16  # second clean step: try the whole batch
    assert policy.choose("k", 16) == 16 and policy.was_trial("k")
    assert policy.shrink("k", 16, 16) == 8  # the growth failed: back to 8
    assert [policy.succeeded("k", 16, 8) for _ in range(4)] == [None, None, None, 16]  # waits 4


def test_unseen_shape_starts_from_the_closest_larger_shape() -> None:
    small = (((128,), torch.int64),)
    large = (((512,), torch.int64),)
    middle = (((256,), torch.int64),)
    policy = MicroBatchPolicy()
    assert policy.choose(middle, 32) == 32  # nothing known yet
    policy.shrink(large, 32, 32)
    policy.shrink(large, 32, 16)
    assert policy.choose(middle, 32) == 8  # fits, since 512-token samples fitted 8 at a time
    assert policy.choose(small, 32) == 8
    assert policy.choose((((1024,), torch.int64),), 32) == 32  # no larger shape known
