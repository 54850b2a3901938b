"""Layers a builder deep-copies are allocated once, as on the GPU.

``copy.deepcopy`` under fake tensors gives the copies a fake mode of their own; memfit used to
make every such weight again in its own mode while the copy still lived, so the traced setup
allocated the model's weights twice (nn.TransformerEncoder: 66 MiB of segments more than the
H200 recording of the validation zoo's inference row, +10.7% of its reserved peak).
"""

from __future__ import annotations

import copy

import pytest
from torch import nn

from memfit.profile import Phase
from memfit.trace.estimate import trace_step


class _Repeated(nn.Module):
    """A block built once and deep-copied, as many model files do."""

    def __init__(self) -> None:
        super().__init__()
        block = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64))
        self.blocks = nn.ModuleList(copy.deepcopy(block) for _ in range(3))

    def forward(self, x):  # type: ignore[no-untyped-def]
        for block in self.blocks:
            x = block(x)
        return x


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(64, 4, 96, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)


@pytest.mark.parametrize(
    ("build", "shape", "copies"),
    [(_Repeated, (96, 64), 3), (_encoder, (96, 64), 3)],
    ids=["deepcopy", "transformer-encoder"],
)
def test_each_weight_is_allocated_once(build, shape, copies) -> None:  # type: ignore[no-untyped-def]
    step = trace_step(build, "float32[4,16,64]", mode="inference", optimizer=None)
    made = [
        a for a in step.trace.allocations.values() if a.phase == Phase.SETUP and a.shape == shape
    ]
    # the copies, plus the block the builder copied from (freed once copied, or kept by the
    # module that made it); never a second fake of each
    assert copies <= len(made) <= copies + 1
    assert not [a for a in made if a.op.startswith("empty_strided")]
