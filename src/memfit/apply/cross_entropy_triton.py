"""The cross-entropy of one chunk of logits and its gradient, in place, as one Triton kernel.

One program per row of logits ``z`` (``V`` of them): a first pass reads the row once for the
running maximum and the sum of exponentials (the online softmax of Milakov and Gimelshein 2018,
"Online normalizer calculation for softmax"), giving ``lse = logsumexp(z)`` and the row's loss;
a second pass reads the row again and overwrites it with the gradient, in the logits' dtype.
Everything is computed in float32 from the stored values, as ``logits.float()`` followed by
PyTorch's cross-entropy computes it; only the order of the sums differs. 6 bytes move per bf16
logit (two reads, one write), against a dozen float32 passes for the same in PyTorch ops.

Imported only where Triton is installed and the logits are on a CUDA device
(``memfit.apply.cross_entropy_kernel``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["cross_entropy_grad_triton", "BLOCK", "NUM_WARPS"]

# logits per step of a row's loop (a power of two), and warps per row: the fastest of five
# settings on an H200 (1024 x 151,936 bf16 logits: 280 us, 3.3 TB/s; 8192 and 16 took 312 us;
# bench/results/costs_h200.json.gz, "ce kernel")
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _cross_entropy_grad_kernel(  # type: ignore[no-untyped-def]  # typed at launch
    logits_ptr,
    targets_ptr,
    scale_ptr,
    loss_ptr,
    row_stride,
    vocab,
    label_smoothing,
    z_loss,
    BLOCK: tl.constexpr,
    SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    top = float("-inf")
    total = 0.0
    summed = 0.0
    for start in range(0, vocab, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < vocab
        z = tl.load(base + offsets, mask=inside, other=float("-inf")).to(tl.float32)
        new_top = tl.maximum(top, tl.max(z, axis=0))
        total = total * tl.exp(top - new_top) + tl.sum(tl.exp(z - new_top), axis=0)
        top = new_top
        if SMOOTHING:
            summed += tl.sum(tl.where(inside, z, 0.0), axis=0)
    lse = top + tl.log(total)
    target = tl.load(targets_ptr + row)
    scale = tl.load(scale_ptr + row).to(tl.float32)
    picked = tl.load(base + target).to(tl.float32)
    loss = lse - (1.0 - label_smoothing) * picked
    coefficient = scale
    if SMOOTHING:
        loss -= label_smoothing * summed / vocab
    if Z_LOSS:
        loss += z_loss * lse * lse
        coefficient = scale * (1.0 + 2.0 * z_loss * lse)
    tl.store(loss_ptr + row, loss)
    on_target = scale * (1.0 - label_smoothing)
    spread = scale * label_smoothing / vocab
    for start in range(0, vocab, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        inside = offsets < vocab
        z = tl.load(base + offsets, mask=inside, other=0.0).to(tl.float32)
        grad = coefficient * tl.exp(z - lse)
        if SMOOTHING:
            grad -= spread
        grad = tl.where(offsets == target, grad - on_target, grad)
        tl.store(base + offsets, grad.to(logits_ptr.dtype.element_ty), mask=inside)


def cross_entropy_grad_triton(
    logits: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    label_smoothing: float,
    z_loss: float,
    *,
    block: int = BLOCK,
    num_warps: int = NUM_WARPS,
) -> torch.Tensor:
    """Per-row losses of ``logits`` ``[N, V]`` (contiguous rows); the logits become gradients.

    See ``memfit.apply.cross_entropy_kernel.cross_entropy_grad_`` for the math.
    """
    rows, vocab = logits.shape
    assert logits.stride(1) == 1, "the kernel walks contiguous rows"
    loss = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return loss
    _cross_entropy_grad_kernel[(rows,)](
        logits,
        targets,
        scale,
        loss,
        logits.stride(0),
        vocab,
        float(label_smoothing),
        float(z_loss),
        BLOCK=min(block, triton.next_power_of_2(vocab)),
        SMOOTHING=bool(label_smoothing),
        Z_LOSS=bool(z_loss),
        num_warps=num_warps,
    )
    return loss
