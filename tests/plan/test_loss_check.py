"""The planner keeps the user's loss: a chunked loss only where it is the same function.

The issue's repro: a user's own 7M-parameter LM with an ``lm_head`` and ``labels`` got
``chunked loss x4`` whatever its loss was (CE + z-loss 9.991 became 9.154). Now the planner
compares the model's own loss with causal-LM cross-entropies before chunking it, and either
the plan's step computes the same loss and gradients, or the plan leaves the chunked loss out
and says why.
"""

from __future__ import annotations

import pytest
import torch

import memfit
from memfit.apply import TrainStep
from memfit.plan.loss_check import chunkable_loss, probe_loss
from memfit.step.causal_lm_loss import CausalLMLoss
from memfit.techniques import ChunkedLoss

from .lm_losses import LOSSES, SMOOTHING, Z_LOSS, batch, build

CHUNKED = {"ce": "", "unshifted": "unshifted", "sum": "sum"}  # the loss each is chunked as
LEFT_OUT = {"z_loss", "smoothing", "aux"}


@pytest.fixture(scope="module")
def budget() -> int:
    peak = memfit.estimate(build(), batch(), device="h100-80gb").peak_reserved
    return int(0.8 * peak)  # where the plain CE model is planned a chunked loss


def loss_and_grads(model, example, plan=(), loss_fn=None):
    """One fp64 forward and backward of ``model`` with ``plan`` applied (then undone), on the
    first 32 positions of ``example`` (the plan is the same for any length)."""
    example = {key: value[:, :32] for key, value in example.items()}
    model = model.double()
    if plan:
        step = memfit.apply(plan, model, None, loss_fn=loss_fn, precision="fp32", device_type="cpu")
    else:
        step = TrainStep(model, None, loss_fn=loss_fn, device_type="cpu")
    loss = step.accumulate(example)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if plan:
        memfit.Plan(tuple(plan.techniques)).undo(model)
    return loss, grads


def assert_same(expected, actual):
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-12, atol=0)
    assert expected[1].keys() == actual[1].keys()
    for name, grad in expected[1].items():
        torch.testing.assert_close(actual[1][name], grad, rtol=1e-9, atol=1e-13, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
def test_the_issue_repro_keeps_the_models_own_loss(loss, budget):
    example = batch()
    plan = memfit.plan(build(loss), example, budget=budget, device="h100-80gb")
    chunked = plan.of(ChunkedLoss)
    if loss in LEFT_OUT:
        assert not chunked, plan.label
        (note,) = [n for n in plan.notes if n.startswith("chunked loss left out")]
        assert "is not a causal-LM cross-entropy" in note and "memfit.CausalLMLoss(" in note
        return
    assert chunked and chunked[0].label_smoothing == 0 and chunked[0].z_loss == 0, plan.label
    assert memfit.techniques.technique_label(chunked[0]).endswith(
        CHUNKED[loss] + ")" * bool(CHUNKED[loss])
    )
    assert_same(loss_and_grads(build(loss), example), loss_and_grads(build(loss), example, plan))


@pytest.mark.slow
@pytest.mark.parametrize(
    "declared",
    [CausalLMLoss(z_loss=Z_LOSS), CausalLMLoss(label_smoothing=SMOOTHING, reduction="sum")],
    ids=["z-loss", "smoothing-sum"],
)
def test_a_declared_loss_is_chunked_as_declared(declared, budget):
    example = batch()
    plan = memfit.plan(build(), example, budget=budget, device="h100-80gb", loss_fn=declared)
    (chunked,) = plan.of(ChunkedLoss)
    assert (chunked.z_loss, chunked.label_smoothing) == (declared.z_loss, declared.label_smoothing)
    expected = loss_and_grads(build(), example, loss_fn=declared)
    assert_same(expected, loss_and_grads(build(), example, plan, loss_fn=declared))


def test_the_declared_smoothing_is_the_models_own():
    # CausalLMLoss(label_smoothing) is F.cross_entropy's: the model's loss, to the last bit
    example = {key: value[:, :32] for key, value in batch().items()}
    model = build("smoothing").double()
    own = model(**example)["loss"]
    declared = CausalLMLoss(label_smoothing=SMOOTHING)(
        model(input_ids=example["input_ids"]), example
    )
    torch.testing.assert_close(declared, own, rtol=1e-14, atol=0)


def test_another_loss_fn_is_not_replaced():
    model = build()

    def my_loss(output, example):
        return output["loss"] * 1.0

    loss, note = chunkable_loss(model, batch(), model, my_loss, None, "lm_head")
    assert loss is None and "would replace your loss_fn" in note


def test_a_builder_that_declares_nothing_is_not_chunked():
    loss, note = chunkable_loss(build, batch(), build(), None, None, "lm_head")
    assert loss is None and "given as a builder" in note


def test_models_without_a_head_or_labels_get_no_note():
    model = build()
    assert chunkable_loss(model, batch(), model, None, None, "head") == (None, None)
    inputs = {"input_ids": batch()["input_ids"]}
    assert chunkable_loss(model, inputs, model, None, None, "lm_head") == (None, None)


def test_declared_by_class_hf_and_zoo():
    from transformers import LlamaConfig, LlamaForCausalLM

    from memfit.zoo.gpt2 import GPT2, GPT2Config

    tiny = GPT2(GPT2Config(n_layers=1, dim=16, n_heads=2, vocab_size=50, max_seq_len=8))
    config = LlamaConfig(
        num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        vocab_size=50,
    )  # fmt: skip
    spec = "input_ids=int64[2,8]<50 labels=int64[2,8]<50"
    for module in (tiny, LlamaForCausalLM(config)):
        loss, note = chunkable_loss(lambda m=module: m, spec, module, None, None, "lm_head")
        assert loss == CausalLMLoss() and note is None


def test_a_hf_class_whose_forward_takes_its_own_loss_is_not_declared():
    from tests.helpers import VOCAB, hf_bart_lm, token_batch

    # BartForCausalLM carries loss_function = ForCausalLMLoss (shifted), but its forward
    # takes an unshifted CrossEntropyLoss: built on fake tensors it must not be chunked as
    # the shifted loss
    module = hf_bart_lm()
    spec = f"input_ids=int64[2,8]<{VOCAB} labels=int64[2,8]<{VOCAB}"
    loss, note = chunkable_loss(hf_bart_lm, spec, module, None, None, "lm_head")
    assert loss is None and "could not be compared" in note
    # the real model is compared on the batch: its loss is the unshifted token mean
    found = probe_loss(module, token_batch(4))
    assert found == CausalLMLoss(shift=False)


def test_probe_leaves_the_model_as_it_was():
    model = build("aux").train()
    model.register_buffer("seen", torch.zeros(3))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.random.get_rng_state()
    assert isinstance(probe_loss(model, batch()), str)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in model.parameters())


def test_probe_reports_a_model_that_fails():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(4, 10)

        def forward(self, input_ids, labels=None):
            raise RuntimeError("no GPU here")

    found = probe_loss(Broken(), batch())
    assert "failed (RuntimeError: no GPU here)" in found
