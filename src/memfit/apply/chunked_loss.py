"""Chunked LM-head cross-entropy: the loss of a language model without its full logits in memory.

The logits of a language model hold ``B * S * V`` numbers, upcast to float32 for the loss: 4.2
GB at batch 8, 1024 tokens and LLaMA-3's 128k vocabulary, often more than the model's
activations. ``ChunkedLoss`` computes the LM head and the loss together, one slice of tokens at
a time, with the fused linear cross-entropy of ``memfit.apply.linear_cross_entropy``: only one
slice's logits ever exist, and they become their own gradient.

The loss computed is ``CausalLMLoss`` with the technique's settings: Hugging Face's
``ForCausalLMLoss`` by default (position ``t`` predicts label ``t + 1``, labels equal to
``-100`` skipped, the sum over the other tokens divided by their number), or the label
smoothing, z-loss, reduction and shift the technique names. It replaces the model's own loss,
so it must be that loss: ``memfit.plan`` checks this before choosing it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn

from memfit.apply.head import HiddenStatesHead, find_head, replace_module
from memfit.apply.linear_cross_entropy import linear_cross_entropy
from memfit.errors import InvalidInputError
from memfit.step.causal_lm_loss import CausalLMLoss, labels_of, logits_of
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import ChunkedLoss

__all__ = ["chunked_cross_entropy", "apply_chunked_loss", "loss_of"]

chunked_cross_entropy = linear_cross_entropy


def loss_of(technique: ChunkedLoss) -> CausalLMLoss:
    """The ``CausalLMLoss`` a ``ChunkedLoss`` computes (its settings, checked).

    Raises:
        InvalidInputError: a setting ``CausalLMLoss`` refuses.
    """
    names = {f.name for f in dataclasses.fields(CausalLMLoss) if f.compare}
    return CausalLMLoss(**{n: getattr(technique, n) for n in names})


@register_applier(ChunkedLoss)
def apply_chunked_loss(model: nn.Module, technique: ChunkedLoss, context: ApplyContext) -> UndoFn:
    """Compute the LM head and its loss in chunks instead of in the model.

    The module ``technique.head`` (an ``nn.Linear``) is replaced by a ``HiddenStatesHead``
    that returns its input, so the model's "logits" are the hidden states. The replacement
    holds the head's own weight and bias parameters (same objects, same names), so
    ``state_dict``, ``named_parameters`` and optimizers see the model as before. The context
    gets ``loss_fn`` (the technique's ``CausalLMLoss``, chunked, from the output's logits and
    the batch's labels) and ``forward_batch`` (the batch without its labels, so the model
    computes no loss of its own). Undo puts the original head object and the loss back.

    The user's loss is kept: a ``loss_fn`` given to the step must be the ``CausalLMLoss`` the
    technique computes (a plan made with it carries its settings); any other ``loss_fn`` is
    refused. Without a ``loss_fn`` the model's own loss is replaced: ``memfit.plan`` chooses
    ``ChunkedLoss`` only where it checked that the model's loss is this one, a hand-made plan
    asserts it.

    Known limitations:
        - Batches must be dicts carrying the labels.
        - While applied, the model's output logits are hidden states: code that reads them
          (metrics, generation) must run after undo.
        - The model must return the head's output unchanged. Models that transform logits
          after the head (Gemma 2 soft-capping, Cohere's logit scale) are refused at the first
          step; so are models that compute logits without calling the head module.
        - Forward hooks registered on the head do not run while applied.
        - Called on a part of a batch, a mean is over that part's labelled tokens; with
          ``MicroBatch`` the training step divides each part by the whole batch's count
          instead (``num_items``), so the sum is the batch's token mean.

    Raises:
        InvalidInputError: ``chunks`` < 1, a loss setting out of range, the head is missing
            or not a Linear, the step's ``loss_fn`` is another loss, or another technique
            already chooses the model's inputs.
    """
    if isinstance(technique.chunks, bool) or not isinstance(technique.chunks, int):
        raise InvalidInputError(f"ChunkedLoss(chunks={technique.chunks!r}) must be an integer")
    if technique.chunks < 1:
        raise InvalidInputError(f"ChunkedLoss(chunks={technique.chunks}) must be >= 1")
    loss = loss_of(technique)
    user = context.loss_fn
    if user is not None and not (isinstance(user, CausalLMLoss) and user == loss):
        given = repr(user) if isinstance(user, CausalLMLoss) else "another loss_fn"
        raise InvalidInputError(
            f"ChunkedLoss computes {loss!r}, but the step's loss is {given}: the plan would "
            f"change your loss. Plan again with this loss_fn (memfit.plan(..., loss_fn=...)), "
            f"or drop ChunkedLoss"
        )
    if context.forward_batch is not None:
        raise InvalidInputError(
            "ChunkedLoss needs to choose the model's inputs, but another technique already "
            "does; keep one ChunkedLoss in the plan"
        )
    head = find_head(model, technique.head)
    passthrough = HiddenStatesHead(head)
    restore_head = replace_module(model, technique.head, head, passthrough)
    context.loss_fn = _ChunkedLossFn(passthrough, technique, loss)
    context.forward_batch = functools.partial(_without, technique.labels_key)

    def undo() -> None:
        context.loss_fn = user
        context.forward_batch = None
        restore_head()

    return undo


class _ChunkedLossFn:
    """``(output, batch) -> loss`` for the TrainStep: the chunked loss of the output's logits.

    ``num_items``, while set (the step sets it to ``count_items`` of the whole batch when it
    splits the batch into micro-batches), replaces each micro-batch's own count of labelled
    tokens: the micro-batch losses then add up to the whole batch's token mean.
    """

    def __init__(self, head: HiddenStatesHead, technique: ChunkedLoss, loss: CausalLMLoss) -> None:
        self.head = head
        self.technique = technique
        self.loss = loss
        self.num_items: torch.Tensor | None = None

    def __call__(self, output: Any, batch: Any) -> torch.Tensor:
        hidden = self.head.hidden_states_in(logits_of(output), self.technique.head)
        loss = self.loss
        return linear_cross_entropy(
            hidden,
            self.head.weight,
            self.head.bias,
            labels_of(batch, loss.labels_key),
            self.technique.chunks,
            ignore_index=loss.ignore_index,
            label_smoothing=loss.label_smoothing,
            z_loss=loss.z_loss,
            reduction=loss.reduction,
            shift=loss.shift,
            num_items=self.num_items,
        )

    def count_items(self, batch: Any) -> torch.Tensor:
        """The tokens of ``batch`` that count in the loss (labels other than ignore_index)."""
        return self.loss.count_items(batch)


def _without(key: str, batch: Any) -> Any:
    labels_of(batch, key)
    return {name: value for name, value in batch.items() if name != key}
