"""One chunk of a fused linear cross-entropy: the rows' losses, and their gradient in place.

``cross_entropy_grad_(logits, targets, scale, label_smoothing, z_loss)`` takes a chunk of logits
``z`` ``[N, V]`` (the matrix product's output, which nothing else holds), the label of each row,
and a per-row factor ``s`` (``1 / count`` on the rows a mean counts, 1 for a sum, 0 on ignored
rows). With ``lse = logsumexp(z)``, ``p = softmax(z)`` and smoothing ``eps``, per row::

    loss = lse - (1 - eps) * z[y] - eps * mean(z) + z_loss * lse ** 2
    dz   = s * ((1 + 2 * z_loss * lse) * p - eps / V - (1 - eps) * onehot(y))

It returns the unscaled losses (float32, or float64 for float64 logits) and overwrites ``z``
with ``dz`` in its own dtype: one chunk-sized buffer is alive, never the float32 logits of a
bf16 one. It is a PyTorch custom operator (``torch.ops.memfit.cross_entropy_grad_``): on a CUDA
device with Triton installed it runs one Triton kernel (``cross_entropy_triton``); elsewhere
PyTorch operators compute the same in a float32 copy of the chunk. On fake tensors (memfit's
tracer) its fake implementation allocates what the CUDA kernel allocates: the losses only.
"""

from __future__ import annotations

import importlib.util

import torch

__all__ = ["cross_entropy_grad_", "cross_entropy_grad_torch", "triton_available"]


def triton_available() -> bool:
    """Whether Triton is installed (the CUDA path then runs the Triton kernel)."""
    return importlib.util.find_spec("triton") is not None


_TRITON = triton_available()


def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


@torch.library.custom_op("memfit::cross_entropy_grad_", mutates_args=("logits",))
def cross_entropy_grad_(
    logits: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    """The rows' losses; ``logits`` is overwritten with their scaled gradient (see the module)."""
    fast = logits.is_cuda and logits.dtype != torch.float64 and logits.stride(-1) == 1
    if fast and _TRITON:
        # Triton is optional and slow to import: only where its kernel runs
        from memfit.apply.cross_entropy_triton import cross_entropy_grad_triton

        return cross_entropy_grad_triton(logits, targets, scale, label_smoothing, z_loss)
    return cross_entropy_grad_torch(logits, targets, scale, label_smoothing, z_loss)


@cross_entropy_grad_.register_fake
def _(
    logits: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    return logits.new_empty(logits.shape[0], dtype=_loss_dtype(logits))


def cross_entropy_grad_torch(
    logits: torch.Tensor,
    targets: torch.Tensor,
    scale: torch.Tensor,
    label_smoothing: float,
    z_loss: float,
) -> torch.Tensor:
    """``cross_entropy_grad_`` in PyTorch operators (CPU, and CUDA without Triton)."""
    z = logits if logits.dtype == _loss_dtype(logits) else logits.to(_loss_dtype(logits))
    index = targets.unsqueeze(1)
    picked = z.gather(1, index).squeeze(1)
    mean = z.mean(dim=-1) if label_smoothing else None
    top = z.amax(dim=-1, keepdim=True)
    grad = z.sub_(top).exp_()  # in place: a second chunk-sized buffer would double the peak
    total = grad.sum(dim=-1, keepdim=True)
    lse = top + total.log()
    loss = lse.squeeze(1) - (1.0 - label_smoothing) * picked
    s = scale.to(grad.dtype).unsqueeze(1)
    if mean is not None:
        loss = loss - label_smoothing * mean
    factor = s / total
    if z_loss:
        loss = loss + z_loss * lse.squeeze(1).square()
        factor = factor * (1.0 + 2.0 * z_loss * lse)
    grad.mul_(factor)  # s * (1 + 2 z lse) * softmax(z)
    if label_smoothing:
        grad.sub_(s * (label_smoothing / logits.shape[-1]))
    grad.scatter_add_(1, index, -s * (1.0 - label_smoothing))
    if grad is not logits:
        logits.copy_(grad)
    return loss
