"""KeptState: a module, its optimizer and the generators put back exactly after a run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memfit.step.kept_state import KeptState
from tests.kept import assert_same, fingerprint


def _trained() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.2), nn.Linear(6, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(8, 6)).sum().backward()
    optimizer.step()
    model(torch.randn(8, 6)).sum().backward()  # gradients left behind
    return model, optimizer


@pytest.mark.parametrize("moved_to", [None, "meta"])
def test_moves_casts_steps_and_slots_are_undone(moved_to) -> None:
    model, optimizer = _trained()
    before = fingerprint(model, optimizer)
    params = list(model.parameters())
    kept = KeptState(model, optimizer, moved_to=None if moved_to is None else torch.device("meta"))
    if moved_to is None:  # the run writes the tensors where they are
        optimizer.step()
        model.to(torch.bfloat16)
    model.to("meta").to(torch.bfloat16)  # another device (the run's), another dtype
    model[0].weight.requires_grad_(False)
    model[3].register_buffer("extra", torch.ones(2))
    model[1].running_mean = torch.zeros(6)
    model.eval()
    optimizer.param_groups[0]["lr"] = 3.0
    optimizer.load_state_dict(optimizer.state_dict())  # new state dicts and group objects
    torch.rand(5)
    kept.restore()
    assert list(model.parameters()) == params
    assert_same(before, fingerprint(model, optimizer))
    optimizer.step()  # still the same parameters' optimizer


def test_a_part_that_cannot_be_put_back_is_named_after_the_rest_is() -> None:
    model, optimizer = _trained()
    kept = KeptState(model, optimizer)
    kept._rng.cpu = torch.zeros(3, dtype=torch.uint8)  # a state set_rng_state refuses
    model.to(torch.bfloat16)
    with pytest.raises(Exception, match="random-number generators"):
        kept.restore()
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the rest is back
