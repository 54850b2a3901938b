"""Which forwards take their loss from ``self.loss_function`` alone, read from their source."""

from __future__ import annotations

import pytest

from memfit.step.hf_loss_source import honours_num_items, loss_is_loss_function

# ruff: noqa: F821  (the forwards below are read, never run)


class Plain:
    def forward(self, input_ids, labels=None, **kwargs):
        logits = self.lm_head(input_ids)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, **kwargs)
        return loss


class RouterAux:  # mixture of experts: an auxiliary loss under a router test (config-gated)
    def forward(self, input_ids, labels=None, output_router_logits=None, **kwargs):
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=input_ids, labels=labels, **kwargs)
        if output_router_logits:
            aux = self.aux(input_ids)
            if labels is not None:
                loss += self.coef * aux
        return loss


class ZLoss:  # Bamba's shape: a z-loss over every position added to the mean
    def forward(self, input_ids, labels=None, **kwargs):
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=input_ids, labels=labels, **kwargs)
            if self.z_loss_coefficient > 0:
                loss = loss + self.z_loss_coefficient * input_ids.logsumexp(-1).pow(2).mean()
        return loss


class OwnCrossEntropy:  # BART's shape: no loss_function at all
    def forward(self, input_ids, labels=None, **kwargs):
        loss = None
        if labels is not None:
            loss = self.cross_entropy(input_ids.view(-1, 5), labels.view(-1))
        return loss


class NoKwargs:  # num_items_in_batch would never reach the loss
    def forward(self, input_ids, labels=None, **kwargs):
        return self.loss_function(logits=input_ids, labels=labels)


class InsideTry:  # nested statements are read too
    def forward(self, input_ids, labels=None, **kwargs):
        loss = self.loss_function(logits=input_ids, labels=labels, **kwargs)
        try:
            pass
        finally:
            loss = loss * 2
        return loss


@pytest.mark.parametrize(
    ("cls", "qualifies"),
    [
        (Plain, True),
        (RouterAux, True),
        (ZLoss, False),
        (OwnCrossEntropy, False),
        (NoKwargs, False),
        (InsideTry, False),
    ],
)
def test_the_loss_must_be_the_loss_function_alone(cls, qualifies):
    assert loss_is_loss_function(cls) is qualifies


def test_a_forward_without_source_does_not_qualify():
    built = type("Built", (), {"forward": eval("lambda self, **kwargs: 0")})  # noqa: S307
    assert loss_is_loss_function(built) is False
    assert loss_is_loss_function(int) is False  # no forward


def test_transformers_causal_lms():
    transformers = pytest.importorskip("transformers")
    assert loss_is_loss_function(transformers.LlamaForCausalLM)
    assert loss_is_loss_function(transformers.MixtralForCausalLM)  # aux loss: config-gated
    assert not loss_is_loss_function(transformers.BartForCausalLM)


class TakesTheCount:  # a user's model that divides by the count itself
    def forward(self, input_ids, labels=None, num_items_in_batch=None, **kwargs):
        return self.cross_entropy(input_ids, labels, reduction="sum") / num_items_in_batch


def test_which_forwards_honour_num_items_in_batch():
    assert honours_num_items(Plain) and honours_num_items(TakesTheCount)
    assert not honours_num_items(OwnCrossEntropy) and not honours_num_items(ZLoss)
