"""Chunked LM-head cross-entropy: the loss of a causal LM without its full logits in memory.

The logits of a causal LM hold ``B * S * V`` numbers, upcast to float32 for the loss: 4.2 GB at
batch 8, 1024 tokens and LLaMA-3's 128k vocabulary, often more than the model's activations.
Here the positions are cut into chunks; for each chunk the forward pass computes the logits,
the loss and, at once, the gradients with respect to the hidden states and the head's weight
(softmax minus the one-hot label, times the head), then drops the logits: backward only scales
the stored gradients. Only one chunk's logits are ever alive and nothing is recomputed (the
approach of fused linear cross-entropy kernels such as Liger's, here in plain PyTorch). The
result is Hugging Face's ``ForCausalLMLoss``: position ``t`` predicts label ``t + 1``, labels
equal to ``-100`` are skipped, and the loss is the sum over the other tokens divided by their
number.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memfit.apply.head import HiddenStatesHead, find_head, replace_module
from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.context import ApplyContext
from memfit.step.loss import IGNORE_INDEX
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import ChunkedLoss

__all__ = ["chunked_cross_entropy", "apply_chunked_loss", "IGNORE_INDEX"]

"""Label value left out of the loss (PyTorch's and Hugging Face's convention)."""


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    chunks: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean next-token cross-entropy of ``hidden @ weight.T + bias`` against ``labels``.

    With ``x = hidden[:, :-1]`` and ``y = labels[:, 1:]`` (``T = S - 1`` predicted positions)::

        loss = sum_{b,t : y[b,t] != ignore} -log softmax(x[b,t] @ weight.T + bias)[y[b,t]] / N

    where ``N`` counts those tokens. The positions are cut into ``chunks`` slices of
    ``ceil(T / chunks)``; each slice's sum is taken in float32 (or the input dtype if wider)
    inside a non-reentrant checkpoint, and the sums are added before the one division. With
    no valid token the loss is NaN, as Hugging Face's.

    Args:
        hidden: ``[B, S, D]``, the LM head's input.
        weight: ``[V, D]``, the LM head's weight.
        bias: ``[V]`` or None.
        labels: ``[B, S]`` token ids, unshifted.
        chunks: how many slices to cut the ``T`` positions into (at least 1).
        ignore_index: label value to skip.
        num_items: divide by this instead of the local count of valid tokens (for gradient
            accumulation normalised over a whole batch, Hugging Face's ``num_items_in_batch``).

    Returns:
        The scalar loss.
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise InvalidInputError(
            f"chunked_cross_entropy needs hidden [B, S, D] and labels [B, S]; got hidden "
            f"{list(hidden.shape)} and labels {list(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise InvalidInputError(
            f"the head weight {list(weight.shape)} does not take hidden states of width "
            f"{hidden.shape[2]}; pass the LM head's [vocab, dim] weight"
        )
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise InvalidInputError(f"chunks={chunks!r} must be an integer >= 1")
    inputs, targets = hidden[:, :-1], labels[:, 1:]
    count = (targets != ignore_index).sum() if num_items is None else num_items
    rows = inputs.reshape(-1, inputs.shape[-1])
    return _LinearCrossEntropy.apply(
        rows, weight, bias, targets.reshape(-1), chunks, ignore_index, count
    )


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of ``rows @ weight.T + bias``, over ``count``; gradients in forward.

    For one chunk with logits ``z`` (upcast to float32 as Hugging Face does), labels ``y`` and
    ``s = 1 / count`` on kept rows (0 on ignored ones)::

        loss  = sum_kept_rows (logsumexp(z) - z[y])          (divided by count at the end)
        dz    = s * (softmax(z) - onehot(y))

    computed in place in the float32 logits (``exp(z - max z)``, its row sums, then the scale),
    so that only one chunk-sized buffer is alive besides the matmul's output. The head is cast
    to the matmul dtype once, not per chunk. The gradients of the rows, the weight and the bias
    follow through the linear map in that dtype, as the unchunked backward computes them; the
    weight's gradient is summed over chunks in its own dtype (float32 for an autocast model).
    """

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        chunks: int,
        ignore_index: int,
        count: int | torch.Tensor,
    ) -> torch.Tensor:
        size = max(1, math.ceil(rows.shape[0] / chunks))
        dtype = _matmul_dtype(rows)
        rows_low, weight_low = rows.to(dtype), weight.to(dtype)
        bias_low = bias.to(dtype) if bias is not None else None
        grad_rows = torch.empty_like(rows)
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias) if bias is not None else None
        total = rows.new_zeros((), dtype=_loss_dtype(rows))
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], size):
                chunk, target = rows_low[start : start + size], labels[start : start + size]
                logits = F.linear(chunk, weight_low, bias_low).to(_loss_dtype(rows_low))
                keep = target != ignore_index
                index = torch.where(keep, target, 0).unsqueeze(1)
                picked = logits.gather(1, index)  # z[y], before the logits are overwritten
                # in place from here: torch.logsumexp would hold a second chunk-sized buffer
                top = logits.amax(dim=-1, keepdim=True)
                grad = logits.sub_(top).exp_()  # exp(z - max)
                total_exp = grad.sum(dim=-1, keepdim=True)
                lse = top + total_exp.log()
                total = total + ((lse - picked).squeeze(1) * keep).sum()
                # s: 1 / count on kept rows, 0 on ignored ones; no boolean indexing (it would
                # wait for the GPU to count the rows)
                scale = (keep.to(grad.dtype) / count).unsqueeze(1)
                grad.mul_(scale / total_exp)  # s * softmax(z)
                grad.scatter_add_(1, index, -scale)
                grad = grad.to(dtype)
                del logits
                grad_rows[start : start + size] = grad @ weight_low
                grad_weight += grad.t() @ chunk
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_rows, grad_weight, grad_bias)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        grad_rows, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output.to(grad_rows.dtype)
        return (
            grad_rows * scale,
            grad_weight * grad_output.to(grad_weight.dtype),
            grad_bias * grad_output.to(grad_bias.dtype) if grad_bias is not None else None,
            None,
            None,
            None,
            None,
        )


def _matmul_dtype(rows: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run the head's matmul in (the rows' dtype without autocast)."""
    device = rows.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return rows.dtype


def _loss_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.promote_types(tensor.dtype, torch.float32)


@register_applier(ChunkedLoss)
def apply_chunked_loss(model: nn.Module, technique: ChunkedLoss, context: ApplyContext) -> UndoFn:
    """Compute the LM head and its loss in chunks instead of in the model.

    The module ``technique.head`` (an ``nn.Linear``) is replaced by a ``HiddenStatesHead``
    that returns its input, so the model's "logits" are the hidden states. The replacement
    holds the head's own weight and bias parameters (same objects, same names), so
    ``state_dict``, ``named_parameters`` and optimizers see the model as before. The context
    gets ``loss_fn`` (this chunked loss, from the output's logits and the batch's labels) and
    ``forward_batch`` (the batch without its labels, so the model computes no loss of its own).
    Undo puts the original head object back.

    Known limitations:
        - Causal LMs only (shifted labels); batches must be dicts carrying the labels.
        - While applied, the model's output logits are hidden states: code that reads them
          (metrics, generation) must run after undo.
        - The model must return the head's output unchanged. Models that transform logits
          after the head (Gemma 2 soft-capping, Cohere's logit scale) are refused at the first
          step; so are models that compute logits without calling the head module.
        - Forward hooks registered on the head do not run while applied.
        - Called on a part of a batch, the loss is the mean over that part's labelled
          tokens; with ``MicroBatch`` the training step divides each part by the whole
          batch's count instead (``num_items``), so the sum is the batch's token mean.

    Raises:
        InvalidInputError: ``chunks`` < 1, the head is missing or not a Linear, or the context
            already has a loss function or input mapping.
    """
    if isinstance(technique.chunks, bool) or not isinstance(technique.chunks, int):
        raise InvalidInputError(f"ChunkedLoss(chunks={technique.chunks!r}) must be an integer")
    if technique.chunks < 1:
        raise InvalidInputError(f"ChunkedLoss(chunks={technique.chunks}) must be >= 1")
    if context.loss_fn is not None:
        raise InvalidInputError(
            "ChunkedLoss computes the loss itself, but a loss_fn is already set; drop loss_fn "
            "(the chunked loss is the model's mean next-token cross-entropy) or drop ChunkedLoss"
        )
    if context.forward_batch is not None:
        raise InvalidInputError(
            "ChunkedLoss needs to choose the model's inputs, but another technique already "
            "does; keep one ChunkedLoss in the plan"
        )
    head = find_head(model, technique.head)
    passthrough = HiddenStatesHead(head)
    restore_head = replace_module(model, technique.head, head, passthrough)
    context.loss_fn = _ChunkedLossFn(passthrough, technique)
    context.forward_batch = functools.partial(_without, technique.labels_key)

    def undo() -> None:
        context.loss_fn = None
        context.forward_batch = None
        restore_head()

    return undo


class _ChunkedLossFn:
    """``(output, batch) -> loss`` for the TrainStep: the chunked loss of the output's logits.

    ``num_items``, while set (the step sets it to ``count_items`` of the whole batch when it
    splits the batch into micro-batches), replaces each micro-batch's own count of labelled
    tokens: the micro-batch losses then add up to the whole batch's token mean.
    """

    def __init__(self, head: HiddenStatesHead, technique: ChunkedLoss) -> None:
        self.head = head
        self.technique = technique
        self.num_items: torch.Tensor | None = None

    def __call__(self, output: Any, batch: Any) -> torch.Tensor:
        hidden = self.head.hidden_states_in(_logits_of(output), self.technique.head)
        labels = _labels_of(batch, self.technique.labels_key)
        return chunked_cross_entropy(
            hidden,
            self.head.weight,
            self.head.bias,
            labels,
            self.technique.chunks,
            num_items=self.num_items,
        )

    def count_items(self, batch: Any) -> torch.Tensor:
        """The tokens of ``batch`` that count in the loss (next-token labels other than -100)."""
        labels = _labels_of(batch, self.technique.labels_key)
        return (labels[:, 1:] != IGNORE_INDEX).sum()


def _without(key: str, batch: Any) -> Any:
    _labels_of(batch, key)
    return {name: value for name, value in batch.items() if name != key}


def _labels_of(batch: Any, key: str) -> torch.Tensor:
    if not isinstance(batch, Mapping):
        raise UnsupportedModelError(
            f"ChunkedLoss needs dict batches (called as model(**batch)) carrying the labels "
            f"under {key!r}; got a {type(batch).__name__}"
        )
    labels = batch.get(key)
    if not isinstance(labels, torch.Tensor):
        raise UnsupportedModelError(
            f"ChunkedLoss needs the labels in the batch under {key!r}, but the batch has "
            f"{', '.join(map(repr, batch)) or 'no keys'}; add them (usually labels=input_ids) "
            f"or set ChunkedLoss(labels_key=...)"
        )
    return labels


def _logits_of(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if logits is None and isinstance(output, torch.Tensor):
        logits = output
    if not isinstance(logits, torch.Tensor):
        raise UnsupportedModelError(
            f"ChunkedLoss cannot find logits in the model's output ({type(output).__name__}); "
            f"the model must return them as .logits, ['logits'], the first item or the output"
        )
    return logits
