"""``tensors_in`` finds exactly the tensors ``tree_flatten`` finds, in the same order."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._pytree import tree_flatten

from memfit.tensor_leaves import tensors_in

Pair = collections.namedtuple("Pair", "first second")


def _flattened(tree: object) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _trees() -> list[object]:
    a, b, c = torch.ones(2), torch.zeros(3, dtype=torch.bfloat16), torch.empty(0)
    return [
        a,
        None,
        3.0,
        (a, 1, None, torch.float32),
        ([a, b], {"out": c, "alpha": 2}),
        ((), {}, [[[]]]),
        collections.OrderedDict(z=a, y=(b, c)),
        Pair(a, [b, Pair(c, a)]),  # named tuples go through the pytree
        {"dims": [0, 1], "memory_format": torch.contiguous_format, "device": torch.device("cpu")},
        [a, a, b],  # the same tensor twice is listed twice
    ]


@pytest.mark.parametrize("tree", _trees())
def test_tensors_in_matches_tree_flatten(tree: object) -> None:
    found = tensors_in(tree)
    expected = _flattened(tree)
    assert [id(t) for t in found] == [id(t) for t in expected]
