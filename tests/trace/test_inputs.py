"""The input-spec mini-language: parsing specs and making the batches they describe."""

from __future__ import annotations

import pytest
import torch

from memfit.errors import InvalidInputError
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
