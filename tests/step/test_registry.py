"""apply_techniques and undo: exact restoration, all-or-nothing, step options, the weak registry."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import pytest
import torch

import memfit.step.registry as registry
from memfit.errors import InvalidInputError, MemfitError, UnsupportedModelError
from memfit.plan.plan import Plan
from memfit.step.context import ApplyContext
from memfit.step.registry import apply_techniques, known_techniques, register_applier
from memfit.step.undo import _APPLIED, applied, record, undo_all
from memfit.techniques import Checkpoint, ChunkedLoss, MicroBatch, MixedPrecision
from tests.helpers import loss_and_grads, tiny_gpt2, token_batch

PLAN = (
    MixedPrecision("bf16-mixed"),
    Checkpoint(("layers.*",), save=("addmm",)),
    ChunkedLoss(4),
    MicroBatch(2),
)


def snapshot(model):
    """Everything undo must restore: objects, parameters by identity, values, attributes."""
    return {
        "modules": [(n, id(m), sorted(m.__dict__)) for n, m in model.named_modules()],
        "params": [(n, id(p)) for n, p in model.named_parameters()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "use_cache": getattr(getattr(model, "config", None), "use_cache", None),
    }


def assert_restored(model, before):
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["params"] == before["params"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key
    assert after["use_cache"] == before["use_cache"]
    for module in model.modules():
        assert module.forward.__func__ is type(module).forward


def test_undo_restores_exactly():
    model, batch = tiny_gpt2(), token_batch()
    before = snapshot(model)
    expected_loss, expected_grads = loss_and_grads(model, batch)
    context = ApplyContext()
    apply_techniques(model, PLAN, context=context)
    assert applied(model)
    assert (context.precision, context.micro_batches) == ("bf16-mixed", 2)
    loss_and_grads(model, batch, context)  # a step with everything in force
    Plan(techniques=PLAN).undo(model)
    assert not applied(model)
    assert context == ApplyContext()
    assert_restored(model, before)
    loss, grads = loss_and_grads(model, batch)
    assert torch.equal(loss, expected_loss)
    assert all(torch.equal(grads[n], g) for n, g in expected_grads.items())


@dataclass(frozen=True)
class Failing:
    error: Exception


@pytest.fixture
def failing(monkeypatch):
    monkeypatch.setattr(registry, "_APPLIERS", dict(registry._APPLIERS))

    @register_applier(Failing)
    def apply_failing(model, technique, context):
        raise technique.error

    return Failing


@pytest.mark.parametrize(
    ("error", "raised"),
    [(RuntimeError("boom"), UnsupportedModelError), (InvalidInputError("bad"), InvalidInputError)],
)
def test_all_or_nothing(failing, error, raised):
    model = tiny_gpt2()
    before = snapshot(model)
    context = ApplyContext()
    with pytest.raises(raised, match=r"Failing\(error=.*nothing was applied") as info:
        apply_techniques(model, [*PLAN, failing(error)], context=context)
    assert info.value.__cause__ is error
    assert not applied(model)
    assert context == ApplyContext()
    assert_restored(model, before)


def test_a_real_failure_rolls_back_the_head():
    model = tiny_gpt2()
    head = model.lm_head
    with pytest.raises(
        InvalidInputError,
        match=r"Checkpoint\(modules=\('blocks\.\*',\).*matches no module.*nothing was",
    ):
        apply_techniques(model, [ChunkedLoss(4), Checkpoint(("blocks.*",))], context=ApplyContext())
    assert model.lm_head is head and not applied(model)


def test_unknown_technique_lists_known_ones():
    with pytest.raises(InvalidInputError, match="no applier for 'x'.*Checkpoint, ChunkedLoss"):
        apply_techniques(tiny_gpt2(), [MicroBatch(2), "x"], context=ApplyContext())
    assert {Checkpoint, ChunkedLoss, MicroBatch, MixedPrecision} <= set(known_techniques())


def test_step_options_are_checked():
    for technique, match in [
        (MicroBatch(0), "integer >= 1"),
        (MixedPrecision("fp8"), "unknown precision 'fp8'; allowed: fp32"),
    ]:
        with pytest.raises(InvalidInputError, match=match):
            apply_techniques(tiny_gpt2(), [technique], context=ApplyContext())
    with pytest.warns(UserWarning, match=r"MicroBatch\(n=1\) has no effect"):
        apply_techniques(tiny_gpt2(), [MicroBatch(1)], context=ApplyContext())
    with pytest.raises(InvalidInputError, match="two MicroBatch"):
        apply_techniques(tiny_gpt2(), [MicroBatch(2), MicroBatch(4)], context=ApplyContext())


def test_hugging_face_cache_is_off_while_checkpointed():
    from tests.helpers import hf_gpt2

    model = hf_gpt2()
    apply_techniques(model, [Checkpoint(("transformer.h.*",))], context=ApplyContext())
    assert model.config.use_cache is False
    undo_all(model)
    assert model.config.use_cache is True


def test_hugging_face_checkpointing_twice_warns():
    from tests.helpers import hf_gpt2

    model = hf_gpt2()
    model.activation_checkpointing_enable()
    with pytest.warns(UserWarning, match="activation_checkpointing_disable"):
        apply_techniques(model, [Checkpoint(("transformer.h.*",))], context=ApplyContext())


def test_undo_without_changes_warns():
    with pytest.warns(UserWarning, match="nothing to undo"):
        undo_all(tiny_gpt2())


def test_undo_failures_are_reported_and_the_rest_still_run():
    model, ran = tiny_gpt2(), []
    record(model, lambda: ran.append("first"))
    record(model, lambda: (_ for _ in ()).throw(RuntimeError("stuck")))
    with pytest.raises(MemfitError, match="1 of 2 undo steps failed.*stuck"):
        undo_all(model)
    assert ran == ["first"] and not applied(model)


def test_registry_does_not_keep_models_alive():
    gc.collect()
    count = len(_APPLIED)
    model = tiny_gpt2()  # its LM head is a direct child of the root
    apply_techniques(model, PLAN, context=ApplyContext())
    assert len(_APPLIED) == count + 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None and len(_APPLIED) == count
