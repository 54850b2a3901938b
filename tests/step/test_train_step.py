"""TrainStep through memfit.apply: the same update as the plain step with every technique."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import InvalidInputError
from memfit.plan.plan import Plan
from memfit.step.loss import loss_is_stand_in
from memfit.step.train_step import TrainStep
from memfit.step.undo import undo_all
from memfit.techniques import Checkpoint, ChunkedLoss, MicroBatch, MixedPrecision
from tests.helpers import (
    assert_same_grads,
    hf_bart_lm,
    hf_gpt2,
    hf_llama,
    loss_and_grads,
    tiny_gpt2,
    token_batch,
)

LAYERS = ("layers.*",)
SELECTIVE = Checkpoint(LAYERS, save=("addmm", "mm", "bmm"))


def batches(batch_size: int = 4):
    # every sample has all its tokens in the loss: the model's token mean is then a mean over
    # samples, which micro-batching with n_i / N weights reproduces exactly
    first = token_batch(batch_size, ignore=False)
    second = {k: v.flip(0).roll(1, dims=1) for k, v in first.items()}
    return [first, second]


def train(model, techniques, data, *, optimizer="sgd"):
    """Two steps with ``memfit.apply``; the losses (the plan is left applied)."""
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    step = memfit.apply(Plan(techniques=tuple(techniques)), model, opt)
    assert isinstance(step, TrainStep)
    return [step(batch) for batch in data]


def assert_same_weights(expected, actual, *, exact):
    for (name, a), (_, b) in zip(
        expected.named_parameters(), actual.named_parameters(), strict=True
    ):
        if exact:
            assert torch.equal(a, b), name
        else:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)


def test_plain_step_is_the_textbook_loop():
    data = batches()
    model, reference = tiny_gpt2(), tiny_gpt2()
    losses = train(model, (), data)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for batch, loss in zip(data, losses, strict=True):
        expected = reference(**batch).loss
        expected.backward()
        opt.step()
        opt.zero_grad()
        assert torch.equal(loss, expected.detach())
        assert not loss.requires_grad
    assert_same_weights(reference, model, exact=True)
    assert all(p.grad is None for p in model.parameters())  # set to None after the step


@pytest.mark.parametrize(
    ("techniques", "exact"),
    [
        ((MicroBatch(2),), False),
        ((MicroBatch(4),), False),
        ((Checkpoint(LAYERS),), True),
        ((SELECTIVE,), True),
        ((ChunkedLoss(4),), False),
        ((SELECTIVE, MicroBatch(2), ChunkedLoss(3)), False),
    ],
    ids=["micro-batch-2", "micro-batch-4", "checkpoint", "selective", "chunked-loss", "all"],
)
@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_same_update_as_the_plain_step(techniques, exact, optimizer):
    data = batches()
    plain, model = tiny_gpt2(), tiny_gpt2()
    expected = train(plain, (), data, optimizer=optimizer)
    losses = train(model, techniques, data, optimizer=optimizer)
    for loss, want in zip(losses, expected, strict=True):
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    assert_same_weights(plain, model, exact=exact)
    Plan(techniques=techniques).undo(model)


def record_batch_sizes(model):
    sizes: list[int] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    return sizes


@pytest.mark.parametrize(("n", "sizes"), [(2, [3, 2]), (3, [2, 2, 1])])
def test_uneven_micro_batches_are_weighted_by_their_size(n, sizes):
    batch = token_batch(5, ignore=False)
    expected_loss, expected_grads = loss_and_grads(tiny_gpt2(), batch)
    model = tiny_gpt2()
    seen = record_batch_sizes(model)
    step = memfit.apply(Plan(techniques=(MicroBatch(n),)), model)  # no optimizer: grads stay
    loss = step(batch)
    assert seen == sizes
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert_same_grads(expected_grads, grads, exact=False)
    # unweighted accumulation (each micro-batch's mean loss summed) would be far off
    assert not torch.allclose(loss * len(sizes), expected_loss, rtol=1e-3)


@pytest.mark.parametrize(
    ("build", "techniques", "rtol"),
    [
        (tiny_gpt2, (MicroBatch(3), ChunkedLoss(2)), 1e-12),
        # Hugging Face's loss runs in float32 (logits.float()) whatever the model's dtype
        (hf_gpt2, (MicroBatch(3),), 1e-6),
        (hf_llama, (MicroBatch(3),), 1e-6),
    ],
    ids=["chunked-loss", "hf-gpt2", "hf-llama"],
)
def test_padded_micro_batches_give_the_batch_token_mean(build, techniques, rtol):
    # micro-batches of 2, 2 and 1 samples: 19, 22 and 9 labelled tokens; weighted by samples,
    # the loss would be 4e-4 off relatively (hf-llama: 4.57809 against 4.58002)
    padded = token_batch(5, ignore=True)
    expected_loss, expected_grads = loss_and_grads(build(), padded)
    model = build()
    step = memfit.apply(Plan(techniques=techniques), model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: nothing to warn about
        loss = step(padded)
    torch.testing.assert_close(loss, expected_loss, rtol=rtol, atol=0)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert_same_grads(expected_grads, grads, exact=False)


def test_micro_batches_of_a_hf_model_with_its_own_loss_give_the_batch_loss():
    # BART's forward takes its own token mean (not self.loss_function): passing it
    # num_items_in_batch changed nothing, and the two halves' means were summed, twice the
    # loss and the gradients (found by bench/plan_exactness_sweep.py); weighted by samples
    # they are the batch's
    batch = token_batch(4, ignore=False)
    expected_loss, expected_grads = loss_and_grads(hf_bart_lm(), batch)
    model = hf_bart_lm()
    loss = memfit.apply(Plan(techniques=(MicroBatch(2),)), model)(batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert_same_grads(expected_grads, grads, exact=False)


def test_micro_batches_with_unequal_shares_of_labelled_tokens_warn():
    padded = token_batch(4, ignore=True)  # -100 in the first and last samples
    expected_loss, _ = loss_and_grads(tiny_gpt2(), padded)
    step = memfit.apply(Plan(techniques=(MicroBatch(2),)), tiny_gpt2())
    with pytest.warns(UserWarning, match=r"hold \[21, 22\] labelled tokens .* for \[2, 2\]"):
        loss = step(padded)
    assert not torch.allclose(loss, expected_loss, rtol=1e-6)  # indeed not the batch's loss
    with warnings.catch_warnings():  # checked once per step object
        warnings.simplefilter("error")
        step(padded)
        memfit.apply(Plan(techniques=(MicroBatch(2),)), tiny_gpt2())(token_batch(4, ignore=False))


def test_micro_batching_a_batchnorm_model_warns_that_it_is_not_exact():
    with_bn = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    with pytest.warns(UserWarning, match=r"BatchNorm in training mode \(1 layers, e.g. '1'\)"):
        memfit.apply(Plan(techniques=(MicroBatch(2),)), with_bn)
    undo_all(with_bn)
    with_bn.eval()  # running statistics: samples independent again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        memfit.apply(Plan(techniques=(MicroBatch(2),)), with_bn)


def test_micro_batch_count_is_checked():
    with pytest.raises(InvalidInputError, match="micro_batches=0 must be at least 1"):
        TrainStep(tiny_gpt2(), None, micro_batches=0)
    step = memfit.apply(Plan(techniques=(MicroBatch(8),)), tiny_gpt2())
    with pytest.raises(InvalidInputError, match="more than the batch's 5 samples; use at most 5"):
        step(token_batch(5))


def snapshot(model):
    return (
        [(name, id(m)) for name, m in model.named_modules()],
        [(name, id(p)) for name, p in model.named_parameters()],
    )


def test_undo_after_training_leaves_the_plain_model():
    data = batches()
    plan = Plan(techniques=(Checkpoint(LAYERS), MicroBatch(2), ChunkedLoss(4)))
    plain, model = tiny_gpt2(), tiny_gpt2()
    before = snapshot(model)
    train(plain, (), data)
    train(model, plan.techniques, data)
    assert memfit.apply.applied(model)
    plan.undo(model)
    assert not memfit.apply.applied(model)
    assert snapshot(model) == before
    assert all(m.forward.__func__ is type(m).forward for m in model.modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    assert_same_weights(plain, model, exact=False)
    # forward is the plain model's again: logits and its own loss from the labels
    out, want = model(**data[0]), plain(**data[0])
    torch.testing.assert_close(out.logits, want.logits, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(out.loss, want.loss, rtol=1e-9, atol=0)


def test_undo_after_checkpointed_training_is_bitwise():
    data = batches()
    plan = Plan(techniques=(Checkpoint(LAYERS),))
    plain, model = tiny_gpt2(), tiny_gpt2()
    reference = copy.deepcopy(model)
    train(plain, (), data)
    train(model, plan.techniques, data)
    plan.undo(model)
    for key, value in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    batch = data[0]
    assert torch.equal(model(**batch).logits, plain(**batch).logits)
    assert not torch.equal(model(**batch).logits, reference(**batch).logits)  # it did train


def test_mixed_precision_runs_the_step_under_autocast():
    model = tiny_gpt2().float()
    dtypes: list[torch.dtype] = []
    model.lm_head.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    batch = token_batch()
    plan = Plan(techniques=(MixedPrecision("bf16-mixed"),))
    step = memfit.apply(plan, model, device_type="cpu")
    assert step.precision.name == "bf16-mixed"
    loss = step(batch)
    assert dtypes == [torch.bfloat16]
    assert loss.dtype == torch.float32  # cross-entropy runs in fp32 under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    plan.undo(model)
    # the argument overrides the plan's precision
    fp32 = memfit.apply(plan, model, precision="fp32", device_type="cpu")
    assert fp32.precision.name == "fp32"
    fp32(batch)
    assert dtypes == [torch.bfloat16, torch.float32]


def test_a_bad_precision_leaves_the_model_unchanged():
    model = tiny_gpt2()
    before = snapshot(model)
    plan = Plan(techniques=(Checkpoint(LAYERS), ChunkedLoss(4)))
    with pytest.raises(InvalidInputError, match="unknown precision 'fp8'"):
        memfit.apply(plan, model, precision="fp8")
    assert not memfit.apply.applied(model)
    assert snapshot(model) == before
    assert all(m.forward.__func__ is type(m).forward for m in model.modules())


class _LogitsOnly(nn.Module):
    """Returns logits and computes no loss: the step falls back to their mean."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_a_step_that_finds_no_loss_warns_once_that_it_minimises_the_mean_output():
    model = _LogitsOnly()
    step = memfit.apply([], model, torch.optim.SGD(model.parameters(), lr=0.1))
    batch = torch.randn(4, 8)
    with torch.no_grad():
        expected = model(batch).float().mean()
    with pytest.warns(UserWarning, match=r"no loss_fn was given.*mean of its first output"):
        loss = step(batch)
    assert torch.allclose(loss, expected)  # the loss it minimised is the one it names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per step object
        step(batch)


def test_a_step_with_a_loss_fn_or_a_model_loss_does_not_warn():
    model = _LogitsOnly()
    with_fn = memfit.apply([], model, torch.optim.SGD(model.parameters(), lr=0.1),
                           loss_fn=lambda output, batch: output.square().mean())  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with_fn(torch.randn(4, 8))
    with_fn.undo()
    gpt2 = tiny_gpt2()
    own = memfit.apply([], gpt2, torch.optim.SGD(gpt2.parameters(), lr=0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        own(token_batch(2))
    assert own.loss_is_output_mean is False and with_fn.loss_is_output_mean is None


def test_a_scalar_first_in_a_tuple_is_the_models_loss_not_a_stand_in():
    # Hugging Face's return_dict=False gives (loss, logits): its mean is the loss itself
    assert not loss_is_stand_in((torch.tensor(2.0), torch.randn(2, 5)))
    assert loss_is_stand_in((torch.randn(2, 5), torch.tensor(2.0)))
    assert loss_is_stand_in({"logits": torch.randn(2, 5)})
    assert not loss_is_stand_in({"loss": torch.tensor(1.0), "logits": torch.randn(2, 5)})
