"""FusedActivation: equal to rounding, smaller in forward, undone exactly, clear errors."""

from __future__ import annotations

import pytest
import torch

from memfit.apply.fused_activation import FusedTanhGELU
from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.registry import apply_techniques
from memfit.step.undo import undo_all
from memfit.techniques import FusedActivation
from tests.helpers import StorageTracker, hf_gpt2, hf_llama, loss_and_grads, token_batch


def fused(model, *patterns):
    apply_techniques(model, [FusedActivation(patterns)], context=ApplyContext())
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_and_gradients_equal_to_rounding(dtype):
    batch = token_batch()
    loss, grads = loss_and_grads(hf_gpt2().to(dtype), batch)
    loss_fused, grads_fused = loss_and_grads(
        fused(hf_gpt2().to(dtype), "transformer.h.*.mlp.act"), batch
    )
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(loss_fused, loss, **tolerance)
    assert grads.keys() == grads_fused.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_fused[name], grad, **tolerance, msg=name)


def test_keeps_fewer_tensors_for_backward():
    batch = token_batch(batch_size=4, seq_len=16)
    kept = []
    for model in (hf_gpt2(), fused(hf_gpt2(), "transformer.h.*.mlp.act")):
        tracker = StorageTracker()
        with tracker:
            loss = model(**batch).loss
            kept.append(sum(s.numel for s in tracker.alive()))
            loss.backward()
    assert kept[1] < kept[0]


def test_undo_restores_the_same_modules():
    model = hf_gpt2()
    before = dict(model.named_modules())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused(model, "transformer.h.*.mlp.act")
    assert isinstance(model.transformer.h[0].mlp.act, FusedTanhGELU)
    assert model.state_dict().keys() == state.keys()
    undo_all(model)
    after = dict(model.named_modules())
    assert after.keys() == before.keys()
    assert all(after[name] is module for name, module in before.items())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_errors_name_the_module_and_the_fix():
    with pytest.raises(InvalidInputError, match="is a Conv1D.*transformer.h.0.mlp.act"):
        fused(hf_gpt2(), "transformer.h.0.mlp.c_fc")
    with pytest.raises(InvalidInputError, match="none in this model"):
        fused(hf_llama(), "model.layers.*.mlp.nothing")
    model = hf_gpt2()
    with pytest.raises(InvalidInputError):
        fused(model, "transformer.h.0.mlp.act", "transformer.h.0.attn.c_attn")
    assert not any(isinstance(m, FusedTanhGELU) for m in model.modules())  # nothing applied
