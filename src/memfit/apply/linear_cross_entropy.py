"""Fused linear + cross-entropy: a causal-LM loss from hidden states, without full logits.

``linear_cross_entropy`` computes ``CausalLMLoss`` of ``hidden @ weight.T + bias`` one chunk of
rows at a time. For each chunk, in forward: the logits (one matrix product, in the autocast
dtype), the rows' losses and, in the same buffer, their gradient
(``memfit.apply.cross_entropy_kernel``), then the gradients of the chunk's hidden states and of
the head (two matrix products); the logits buffer is then reused by the next chunk. Backward
only scales the stored gradients by the incoming one. No logits of the whole batch exist in any
precision, nothing is recomputed, and every matrix product runs in the dtype autocast would
give the head's (bf16 under bf16-mixed), as the unchunked step runs it.

Gradient of the head: summed over chunks in its own dtype (float32 for an autocast model, on
CUDA by a bf16-input, float32-output product per chunk; the unchunked step rounds it once to
bf16 before its cast back, so the two agree to bf16 rounding).
A head tied to the input embedding gets this gradient through autograd, as the unchunked one.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode, is_fake
from torch.utils._python_dispatch import _disable_current_modes

from memfit.apply.cross_entropy_kernel import cross_entropy_grad_
from memfit.errors import InvalidInputError
from memfit.step.causal_lm_loss import REDUCTIONS
from memfit.step.loss import IGNORE_INDEX

__all__ = ["linear_cross_entropy", "matmul_dtype"]

# Accumulate the head's gradient on CUDA with one bf16-input, float32-output product per chunk
# (aten::addmm.dtype_out, PyTorch 2.8+) instead of a bf16 product added to it: no bf16 copy of
# the head's gradient, one pass less over it. Measured on an H200, head + loss alone, Qwen2
# shape, 4 chunks: 7.23 ms against 8.82 ms (bench/results/costs_h200.json.gz).
FP32_OUT_PRODUCT = hasattr(torch.ops.aten.addmm, "dtype_out")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    chunks: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "mean",
    shift: bool = True,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """``CausalLMLoss(...)`` of the logits ``hidden @ weight.T + bias``, in ``chunks`` slices.

    Args:
        hidden: ``[..., D]`` (``[B, S, D]`` with ``shift``), the head's input.
        weight: ``[V, D]``; bias: ``[V]`` or None.
        labels: ``hidden.shape[:-1]``, unshifted token ids.
        chunks: how many slices to cut the rows into (at least 1).
        ignore_index, label_smoothing, z_loss, reduction, shift: as ``CausalLMLoss``'s.
        num_items: with ``reduction="mean"``, divide by this instead of the count of labelled
            tokens (Hugging Face's ``num_items_in_batch``, for gradient accumulation).

    Returns:
        The scalar loss, in float32 (float64 for float64 inputs). With no labelled token, a
        mean is NaN, as ``F.cross_entropy``'s.
    """
    _check(hidden, weight, labels, chunks, reduction, shift)
    if shift:  # position t predicts label t + 1; the last position predicts nothing
        padding = labels.new_full((*labels.shape[:-1], 1), ignore_index)
        labels = torch.cat([labels[..., 1:], padding], dim=-1)
    rows = hidden.reshape(-1, hidden.shape[-1])
    targets = labels.reshape(-1)
    keep = targets != ignore_index
    divisor = None
    if reduction == "mean":
        divisor = keep.sum() if num_items is None else num_items
    return _LinearCrossEntropy.apply(
        rows, weight, bias, targets, keep, chunks, float(label_smoothing), float(z_loss), divisor
    )


def _check(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunks: int,
    reduction: str,
    shift: bool,
) -> None:
    if labels.shape != hidden.shape[:-1] or (shift and hidden.dim() != 3):
        expected = "hidden [B, S, D] and labels [B, S]" if shift else "labels hidden.shape[:-1]"
        raise InvalidInputError(
            f"the chunked loss needs {expected}; got hidden {list(hidden.shape)} and labels "
            f"{list(labels.shape)}"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise InvalidInputError(
            f"the head weight {list(weight.shape)} does not take hidden states of width "
            f"{hidden.shape[-1]}; pass the LM head's [vocab, dim] weight"
        )
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise InvalidInputError(f"chunks={chunks!r} must be an integer >= 1")
    if reduction not in REDUCTIONS:
        raise InvalidInputError(f"reduction={reduction!r} must be one of {REDUCTIONS}")


class _LinearCrossEntropy(torch.autograd.Function):
    """The loss and, computed in forward, the gradients of the rows, the weight and the bias."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        keep: torch.Tensor,
        chunks: int,
        label_smoothing: float,
        z_loss: float,
        divisor: torch.Tensor | int | None,
    ) -> torch.Tensor:
        size = max(1, math.ceil(rows.shape[0] / chunks))
        dtype = matmul_dtype(rows)
        loss_dtype = torch.promote_types(dtype, torch.float32)
        rows_low, weight_low = rows.to(dtype), weight.to(dtype)
        bias_low = bias.to(dtype) if bias is not None else None
        index = torch.where(keep, targets, 0)
        # s: 1 / count on counted rows, 0 on ignored ones (no boolean indexing: it would wait
        # for the GPU to count the rows)
        scale = keep.to(loss_dtype)
        if divisor is not None:
            scale = scale / divisor
        losses = torch.empty(rows.shape[0], dtype=loss_dtype, device=rows.device)
        grad_rows = torch.empty_like(rows)
        grad_weight = torch.zeros_like(weight)
        grad_bias = torch.zeros_like(bias) if bias is not None else None
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], size):
                stop = start + size
                chunk = rows_low[start:stop]
                logits = F.linear(chunk, weight_low, bias_low)
                losses[start:stop] = cross_entropy_grad_(
                    logits, index[start:stop], scale[start:stop], label_smoothing, z_loss
                )
                grad = logits  # now the gradient of the chunk's logits
                if grad_rows.dtype == dtype:
                    torch.mm(grad, weight_low, out=grad_rows[start:stop])
                else:
                    grad_rows[start:stop] = grad @ weight_low
                if grad_weight.dtype == dtype:
                    grad_weight.addmm_(grad.t(), chunk)
                elif not (
                    _fp32_out_product(grad, grad_weight)
                    and _fp32_out_added(grad, chunk, grad_weight)
                ):
                    grad_weight += grad.t() @ chunk
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
                del logits, grad
        ctx.save_for_backward(grad_rows, grad_weight, grad_bias)
        total = (losses * keep).sum()
        return total if divisor is None else total / divisor

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:
        grad_rows, grad_weight, grad_bias = ctx.saved_tensors
        return (
            grad_rows * grad_output.to(grad_rows.dtype),
            grad_weight * grad_output.to(grad_weight.dtype),
            grad_bias * grad_output.to(grad_bias.dtype) if grad_bias is not None else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )


_ADDMM_FP32 = getattr(torch.ops.aten.addmm, "dtype_out", None)


@functools.cache
def fakes_run_fp32_out() -> bool:
    """Whether the tracer's fake tensors run ``addmm.dtype_out``; tried once, on tiny tensors
    outside any trace. PyTorch 2.8 and 2.11 decompose it into the plain ``addmm`` with the
    dtype taken for ``beta`` and fail (the H200 run of bench/plans.py traced no chunked loss
    because of it). Tried inside a trace, the failure printed torch's error, and a logging
    handler that keeps records (pytest's) kept the failed attempt's tensors alive in its
    traceback: 17.6 MB more on the first trace of a small model than on the next (torch 2.8)."""
    if _ADDMM_FP32 is None:
        return False
    fake_tensor_log = logging.getLogger("torch._subclasses.fake_tensor")
    disabled, fake_tensor_log.disabled = fake_tensor_log.disabled, True  # it logs the TypeError
    try:
        with _disable_current_modes(), FakeTensorMode():
            total = torch.zeros(2, 2)
            part = torch.ones(2, 2, dtype=torch.bfloat16)
            _ADDMM_FP32(total, part.t(), part, torch.float32, out=total)
        return True
    except TypeError:
        return False
    finally:
        fake_tensor_log.disabled = disabled


def _fp32_out_added(grad: torch.Tensor, chunk: torch.Tensor, grad_weight: torch.Tensor) -> bool:
    """``grad_weight += grad.T @ chunk`` as one float32-output product; False where fake
    tensors cannot run it. The caller then adds a bf16 product, which predicts one more
    [vocabulary, hidden] temporary than the GPU uses."""
    if _ADDMM_FP32 is None or (is_fake(grad) and not fakes_run_fp32_out()):
        return False
    _ADDMM_FP32(grad_weight, grad.t(), chunk, torch.float32, out=grad_weight)
    return True


def _fp32_out_product(grad: torch.Tensor, grad_weight: torch.Tensor) -> bool:
    """Whether the head's gradient accumulates through a float32-output product: on CUDA (and
    on the tracer's fake tensors, which stand for CUDA ones), for bf16/fp16 products into a
    float32 gradient."""
    on_cuda = grad.is_cuda or is_fake(grad)
    low = grad.dtype in (torch.bfloat16, torch.float16)
    return FP32_OUT_PRODUCT and on_cuda and low and grad_weight.dtype == torch.float32


def matmul_dtype(rows: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run the head's matmul in (the rows' dtype without autocast)."""
    device = rows.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return rows.dtype
