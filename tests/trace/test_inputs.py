"""The input-spec mini-language and calling models with batches."""

from __future__ import annotations

import pytest
import torch

from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.batch import call_model, describe_batch
from memfit.trace.inputs import make_inputs, parse_input_spec


def test_named_spec():
    specs = parse_input_spec("input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257")
    assert [(s.name, s.dtype, s.shape, s.high) for s in specs] == [
        ("input_ids", torch.int64, (8, 1024), 50257),
        ("labels", torch.int64, (8, 1024), 50257),
    ]
    batch = make_inputs(specs)
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].max() < 50257


def test_unnamed_specs_make_a_tensor_or_a_tuple():
    assert make_inputs(parse_input_spec("float32[4,3]")).shape == (4, 3)
    pair = make_inputs(parse_input_spec("float32[4,3]; int64[4]<10"))
    assert isinstance(pair, tuple) and pair[1].dtype == torch.int64


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("input_ids=int64(8,1024)", "malformed"),
        ("x=float33[2]", "unknown dtype 'float33'"),
        ("x=float32[2,0]", "dimension < 1"),
        ("x=float32[2]<5", "integer inputs only"),
        ("x=float32[2] float32[2]", "mixes named and unnamed"),
        ("x=int64[2,a]", "not a list of integers"),
    ],
)
def test_malformed_specs_say_what_is_wrong(spec, message):
    with pytest.raises(InvalidInputError, match=message):
        parse_input_spec(spec)


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
