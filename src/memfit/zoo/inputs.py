"""Example batches for zoo models, and the text that describes them.

``make_batch`` only calls torch factory functions, so inside ``FakeTensorMode`` it returns fake
tensors and inside ``with torch.device("meta")`` meta tensors; neither allocates memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from memfit.errors import InvalidInputError

__all__ = ["TokenInputs", "ImageInputs"]


def _check_size(model: str, what: str, value: object, low: int, high: int | None) -> int:
    """Return ``value`` if it is an int in ``[low, high]``, else raise InvalidInputError."""
    allowed = f"{low}..{high}" if high is not None else f"{low} or more"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(
            f"{what} for {model} must be an integer in {allowed}, got {value!r}; "
            f"pass a whole number such as {what}={low}"
        )
    if value < low or (high is not None and value > high):
        fix = (
            f"{model} has {high} positions; pass {what}={high} or less"
            if high is not None and value > high
            else f"pass {what}={low} or more, or leave it unset for {model}'s default"
        )
        raise InvalidInputError(f"{what}={value} is out of range for {model} ({allowed}); {fix}")
    return value


@dataclass(frozen=True)
class TokenInputs:
    """Token-id batches of a language model: ``input_ids`` and ``labels`` (the same tensor).

    Attributes:
        model: zoo name, used in messages.
        vocab_size: ids are drawn uniformly from ``[0, vocab_size)``.
        max_seq_len: the model's positions; longer sequences are rejected.
        default_batch_size: used when ``batch_size`` is None.
        default_seq_len: used when ``seq_len`` is None.
    """

    model: str
    vocab_size: int
    max_seq_len: int
    default_batch_size: int
    default_seq_len: int

    def _sizes(self, batch_size: int | None, seq_len: int | None) -> tuple[int, int]:
        b = self.default_batch_size if batch_size is None else batch_size
        s = self.default_seq_len if seq_len is None else seq_len
        b = _check_size(self.model, "batch_size", b, 1, None)
        s = _check_size(self.model, "seq_len", s, 1, self.max_seq_len)
        return b, s

    def make_batch(
        self,
        batch_size: int | None = None,
        seq_len: int | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Random token ids.

        Args:
            batch_size: sequences; None for the default.
            seq_len: tokens per sequence; None for the default.
            device: where to put the tensors; None for torch's current default device.

        Returns:
            ``{"input_ids": int64 [B, S], "labels": the same tensor}``. The loss shifts labels
            itself for causal models, so labels equal the inputs, as in Hugging Face's examples.

        Raises:
            InvalidInputError: a size is not an integer, below 1, or longer than the positions.
        """
        b, s = self._sizes(batch_size, seq_len)
        input_ids = torch.randint(0, self.vocab_size, (b, s), dtype=torch.int64, device=device)
        return {"input_ids": input_ids, "labels": input_ids}

    def input_spec(self, batch_size: int | None = None, seq_len: int | None = None) -> str:
        """Describe ``make_batch(batch_size, seq_len)`` without building it.

        Returns:
            For example ``"input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257"``.
        """
        b, s = self._sizes(batch_size, seq_len)
        ids = f"int64[{b},{s}]<{self.vocab_size}"
        return f"input_ids={ids} labels={ids}"


@dataclass(frozen=True)
class ImageInputs:
    """Image-classification batches: ``pixel_values`` and class ``labels``.

    Attributes:
        model: zoo name, used in messages.
        channels: image channels (3).
        image_size: height and width.
        num_classes: labels are drawn uniformly from ``[0, num_classes)``.
        default_batch_size: used when ``batch_size`` is None.
    """

    model: str
    channels: int
    image_size: int
    num_classes: int
    default_batch_size: int

    def _size(self, batch_size: int | None, seq_len: int | None) -> int:
        if seq_len is not None:
            warnings.warn(
                f"seq_len={seq_len} has no effect on {self.model}, which takes "
                f"{self.image_size}x{self.image_size} images; leave it unset",
                stacklevel=3,
            )
        b = self.default_batch_size if batch_size is None else batch_size
        return _check_size(self.model, "batch_size", b, 1, None)

    def make_batch(
        self,
        batch_size: int | None = None,
        seq_len: int | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Random normal images and random class labels.

        Args:
            batch_size: images; None for the default.
            seq_len: ignored (with a warning) for vision models.
            device: where to put the tensors; None for torch's current default device.

        Returns:
            ``{"pixel_values": float32 [B, C, H, W], "labels": int64 [B]}``.

        Raises:
            InvalidInputError: ``batch_size`` is not an integer of at least 1.
        """
        b = self._size(batch_size, seq_len)
        shape = (b, self.channels, self.image_size, self.image_size)
        pixel_values = torch.randn(shape, dtype=torch.float32, device=device)
        labels = torch.randint(0, self.num_classes, (b,), dtype=torch.int64, device=device)
        return {"pixel_values": pixel_values, "labels": labels}

    def input_spec(self, batch_size: int | None = None, seq_len: int | None = None) -> str:
        """Describe ``make_batch(batch_size)`` without building it.

        Returns:
            For example ``"pixel_values=float32[128,3,224,224] labels=int64[128]<1000"``.
        """
        b = self._size(batch_size, seq_len)
        c, hw = self.channels, self.image_size
        return f"pixel_values=float32[{b},{c},{hw},{hw}] labels=int64[{b}]<{self.num_classes}"
