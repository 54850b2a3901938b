"""Batches: cutting them into micro-batches, their shapes, and calling models with them."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch

from memfit.errors import UnsupportedModelError
from memfit.step.batch import (
    batch_size_of,
    call_model,
    describe_batch,
    micro_batch_sizes,
    shape_key,
    split_batch,
)


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


def test_call_conventions():
    seen = {}

    def model(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return 0

    call_model(model, {"a": 1})
    assert seen["kwargs"] == {"a": 1}
    call_model(model, (1, 2))
    assert seen["args"] == (1, 2)


def test_a_batch_that_does_not_fit_the_signature():
    linear = torch.nn.Linear(3, 3)
    with pytest.raises(UnsupportedModelError, match="does not fit the model's forward"):
        call_model(linear, {"input_ids": torch.zeros(2, 3)})


def test_describe_batch():
    text = describe_batch({"ids": torch.zeros(8, 16, dtype=torch.int64)})
    assert text == "ids=int64[8,16]"
