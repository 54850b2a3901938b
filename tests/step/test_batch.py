"""Batch splitting and the micro-batch size policy."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch

from memfit.guard import batch_size_of, micro_batch_sizes, split_batch
from memfit.guard.policy import MicroBatchPolicy
from memfit.step.batch import shape_key


def test_micro_batch_sizes_cover_the_batch_exactly() -> None:
    assert micro_batch_sizes(10, 4) == [4, 4, 2]
    assert micro_batch_sizes(12, 4) == [4, 4, 4]
    assert micro_batch_sizes(3, 8) == [3]
    for n in range(1, 40):
        for m in range(1, n + 2):
            assert sum(micro_batch_sizes(n, m)) == n


def test_nested_batch_is_cut_along_dim_0_as_views() -> None:
    Pair = namedtuple("Pair", "a b")
    x = torch.arange(20.0).reshape(10, 2)
    batch = {
        "x": x,
        "pair": Pair(torch.arange(10), [torch.ones(10, 3), "tag"]),
        "scale": torch.tensor(2.0),
        "meta": OrderedDict(name="run", ids=torch.arange(10)),
        "flag": None,
    }
    assert batch_size_of(batch) == 10
    parts = split_batch(batch, [4, 4, 2])
    assert [batch_size_of(p) for p in parts] == [4, 4, 2]
    assert parts[1]["x"].data_ptr() == x[4:].data_ptr()  # a view, no copy
    assert isinstance(parts[0]["pair"], Pair) and parts[0]["pair"].b[1] == "tag"
    assert isinstance(parts[0]["meta"], OrderedDict) and parts[2]["meta"]["name"] == "run"
    assert parts[2]["scale"] is batch["scale"] and parts[0]["flag"] is None
    torch.testing.assert_close(torch.cat([p["pair"].a for p in parts]), torch.arange(10))


def test_hugging_face_batch_encoding_keeps_its_type() -> None:
    transformers = pytest.importorskip("transformers")
    enc = transformers.BatchEncoding({"input_ids": torch.ones(6, 5, dtype=torch.long)})
    parts = split_batch(enc, [3, 3])
    assert all(type(p) is transformers.BatchEncoding for p in parts)
    assert parts[0]["input_ids"].shape == (3, 5) and parts[0].input_ids.shape == (3, 5)
    assert enc["input_ids"].shape == (6, 5)  # the original is untouched


def test_shape_key_is_per_sample() -> None:
    a = {"x": torch.zeros(8, 128), "y": torch.zeros(8)}
    b = {"x": torch.zeros(3, 128), "y": torch.zeros(3)}
    c = {"x": torch.zeros(8, 256), "y": torch.zeros(8)}
    assert shape_key(a) == shape_key(b) != shape_key(c)


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
