"""What every zoo model returns, and the two losses the zoo uses.

Loss dtype. Logits are upcast to float32 before the loss only where the reference
implementation does so: Hugging Face's LLaMA computes its loss on ``logits.float()``, while the
original GPT-2, BERT and torchvision training code take the cross-entropy in the logits' own dtype.
Under ``torch.autocast`` this makes no difference, since autocast runs ``cross_entropy`` in float32;
it matters only for pure low-precision runs (``precision="bf16"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from memfit.step.loss import IGNORE_INDEX

__all__ = ["ZooOutput", "causal_lm_loss", "token_loss", "IGNORE_INDEX"]


@dataclass(frozen=True)
class ZooOutput:
    """Output of a zoo model's forward.

    Attributes:
        loss: scalar cross-entropy when labels were given, else None.
        logits: ``[B, S, vocab]`` for language models, ``[B, num_classes]`` for vision models.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position ``t`` predicts token ``t + 1``.

    Args:
        logits: ``[B, S, V]``.
        labels: ``[B, S]`` token ids; ``IGNORE_INDEX`` entries are skipped.

    Returns:
        The mean loss over the ``B * (S - 1)`` predicted positions. The shifted logits are copied
        into one contiguous ``[B * (S - 1), V]`` tensor, as in Hugging Face's GPT-2 and LLaMA.
    """
    return token_loss(logits[:, :-1, :], labels[:, 1:])


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position against its own label (masked-LM style).

    Args:
        logits: ``[B, S, V]``.
        labels: ``[B, S]`` token ids; ``IGNORE_INDEX`` entries are skipped.

    Returns:
        The mean loss over the labelled positions.
    """
    vocab_size = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, vocab_size), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )
