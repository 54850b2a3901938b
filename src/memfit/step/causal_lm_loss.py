"""CausalLMLoss: a language model's token cross-entropy, declared so that memfit may chunk it.

A chunked loss (``memfit.ChunkedLoss``) replaces the model's LM head and loss by its own
computation. It may do so only where it computes the same function. ``CausalLMLoss`` is that
function, with the variants models use: shifted (position ``t`` predicts label ``t + 1``, as
Hugging Face's ``ForCausalLMLoss``) or not, a label to ignore, label smoothing, a z-loss
(PaLM, Chowdhery et al. 2022, section 5: ``z_loss * logsumexp(logits) ** 2`` per token), and a
mean or a sum over the labelled tokens. Given as ``loss_fn`` it is the step's loss (computed
here from the model's full logits); the chunked loss computes exactly this, slice by slice.

Per labelled token with logits ``z`` (``V`` of them), label ``y``, ``lse = logsumexp(z)`` and
smoothing ``eps``::

    loss = (1 - eps) * (lse - z[y]) + eps * (lse - mean(z)) + z_loss * lse ** 2

summed over the labelled tokens, then divided by their number for ``reduction="mean"``. With
``eps`` this is ``F.cross_entropy(..., label_smoothing=eps)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.hf_loss_source import loss_is_loss_function
from memfit.step.loss import IGNORE_INDEX

__all__ = [
    "CausalLMLoss",
    "REDUCTIONS",
    "declared_loss",
    "hf_causal_lm_loss",
    "logits_of",
    "labels_of",
]

REDUCTIONS = ("mean", "sum")


@dataclass
class CausalLMLoss:
    """The token cross-entropy of a language model, as a loss function ``(output, batch)``.

    Args:
        ignore_index: label value left out of the loss (padding, prompts).
        label_smoothing: ``eps`` in [0, 1): the target is ``1 - eps`` on the label and ``eps``
            spread evenly over the vocabulary, as ``F.cross_entropy``'s.
        z_loss: coefficient of ``logsumexp(logits) ** 2`` added per labelled token (0: none).
        reduction: ``"mean"`` over the labelled tokens, or ``"sum"``.
        shift: position ``t``'s logits predict label ``t + 1`` (causal LMs whose labels are
            their inputs); False: each position predicts its own label.
        labels_key: where the batch (a dict) holds the labels.

    Attributes:
        num_items: while set (by the training step, when it splits a batch into
            micro-batches), ``"mean"`` divides by this count of the whole batch's labelled
            tokens instead of the micro-batch's own, so that micro-batch losses add up to the
            batch's mean.
    """

    ignore_index: int = IGNORE_INDEX
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    reduction: str = "mean"
    shift: bool = True
    labels_key: str = "labels"
    num_items: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise InvalidInputError(
                f"CausalLMLoss(ignore_index={self.ignore_index!r}) must be an integer label"
            )
        if not 0.0 <= float(self.label_smoothing) < 1.0:
            raise InvalidInputError(
                f"CausalLMLoss(label_smoothing={self.label_smoothing!r}) must be in [0, 1)"
            )
        if not float(self.z_loss) >= 0.0:
            raise InvalidInputError(f"CausalLMLoss(z_loss={self.z_loss!r}) must be >= 0")
        if self.reduction not in REDUCTIONS:
            raise InvalidInputError(
                f"CausalLMLoss(reduction={self.reduction!r}) must be one of {REDUCTIONS}; "
                f"'none' is not a scalar loss"
            )

    def settings(self) -> dict[str, Any]:
        """The fields that define the function (``ChunkedLoss`` carries the same ones)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.compare}

    def __call__(self, output: Any, batch: Any) -> torch.Tensor:
        return self.from_logits(logits_of(output), labels_of(batch, self.labels_key))

    def from_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` ``[..., V]`` against ``labels`` ``[...]`` (full logits)."""
        if labels.shape != logits.shape[:-1]:
            raise UnsupportedModelError(
                f"CausalLMLoss: labels of shape {list(labels.shape)} do not match logits of "
                f"shape {list(logits.shape)} (expected labels {list(logits.shape[:-1])})"
            )
        if self.shift:
            if logits.dim() < 3:
                raise UnsupportedModelError(
                    f"CausalLMLoss(shift=True) needs logits [B, S, V], got {list(logits.shape)}; "
                    f"set shift=False for labels aligned with their positions"
                )
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        rows = logits.reshape(-1, logits.shape[-1])
        rows = rows.to(torch.promote_types(rows.dtype, torch.float32))  # as HF upcasts
        targets = labels.reshape(-1)
        per_token = F.cross_entropy(
            rows,
            targets,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=float(self.label_smoothing),
        )
        keep = targets != self.ignore_index
        if self.z_loss:
            per_token = per_token + self.z_loss * torch.logsumexp(rows, dim=-1).square() * keep
        total = per_token.sum()
        if self.reduction == "sum":
            return total
        return total / (self.num_items if self.num_items is not None else keep.sum())

    def count_items(self, batch: Any) -> torch.Tensor:
        """The batch's labelled tokens (those its loss is a mean over)."""
        labels = labels_of(batch, self.labels_key)
        if self.shift:
            labels = labels[..., 1:]
        return (labels != self.ignore_index).sum()


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model's output: ``.logits``, ``["logits"]``, the first item or itself.

    Raises:
        UnsupportedModelError: none of these is a tensor.
    """
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)) and output:
        logits = output[0]
    if logits is None and isinstance(output, torch.Tensor):
        logits = output
    if not isinstance(logits, torch.Tensor):
        raise UnsupportedModelError(
            f"cannot find logits in the model's output ({type(output).__name__}); the model "
            f"must return them as .logits, ['logits'], the first item or the output itself"
        )
    return logits


def labels_of(batch: Any, key: str) -> torch.Tensor:
    """The labels of a dict batch.

    Raises:
        UnsupportedModelError: the batch is not a dict, or holds no tensor under ``key``.
    """
    if not isinstance(batch, Mapping):
        raise UnsupportedModelError(
            f"a causal-LM loss needs dict batches (called as model(**batch)) carrying the "
            f"labels under {key!r}; got a {type(batch).__name__}"
        )
    labels = batch.get(key)
    if not isinstance(labels, torch.Tensor):
        raise UnsupportedModelError(
            f"a causal-LM loss needs the labels in the batch under {key!r}, but the batch has "
            f"{', '.join(map(repr, batch)) or 'no keys'}; add them (usually labels=input_ids) "
            f"or set labels_key=..."
        )
    return labels


def hf_causal_lm_loss(module: nn.Module | None) -> bool:
    """Whether ``module`` is a Hugging Face model whose loss is ``ForCausalLMLoss`` alone and
    whose forward passes ``num_items_in_batch`` on to it (through ``**kwargs``).

    Mixture-of-experts models that add their router's auxiliary loss
    (``config.output_router_logits``) do not qualify, nor do models whose forward computes its
    loss another way than ``self.loss_function`` (``memfit.step.hf_loss_source``).
    """
    if module is None or not type(module).__module__.startswith("transformers."):
        return False
    try:
        from transformers.loss.loss_utils import ForCausalLMLoss  # optional dependency
    except ImportError:  # transformers without its loss module (before 4.46)
        return False
    if getattr(module, "loss_function", None) is not ForCausalLMLoss:
        return False
    if getattr(getattr(module, "config", None), "output_router_logits", False):
        return False
    parameters = inspect.signature(type(module).forward).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return False
    return loss_is_loss_function(type(module))  # BART's and others' forwards compute their own


def declared_loss(module: nn.Module | None) -> CausalLMLoss | None:
    """The loss a model's class declares its ``output.loss`` to be, or None.

    Hugging Face models whose loss is ``ForCausalLMLoss`` alone compute ``CausalLMLoss()``
    (shifted, mean, -100 ignored); a class may declare its own with a class attribute
    ``memfit_loss = CausalLMLoss(...)`` (memfit's zoo does).
    """
    declared = getattr(type(module), "memfit_loss", None) if module is not None else None
    if isinstance(declared, CausalLMLoss):
        return CausalLMLoss(**declared.settings())
    if hf_causal_lm_loss(module):
        return CausalLMLoss()
    return None
