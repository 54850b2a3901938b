"""cross_entropy_grad_: one chunk's losses and gradient in place, in PyTorch and in Triton."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from memfit.apply.cross_entropy_kernel import cross_entropy_grad_, cross_entropy_grad_torch

SETTINGS = [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)]


def chunk(dtype=torch.float64, rows=6, vocab=37):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(rows, vocab, generator=generator)).to(dtype)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    scale = torch.rand(rows, generator=generator, dtype=torch.float64).to(
        torch.promote_types(dtype, torch.float32)
    )
    scale[1] = 0.0  # an ignored row
    return logits, targets, scale


@pytest.mark.parametrize("smoothing, z_loss", SETTINGS)
def test_losses_and_gradient_are_the_autograd_ones(smoothing, z_loss):
    logits, targets, scale = chunk()
    leaf = logits.clone().requires_grad_()
    per_row = F.cross_entropy(leaf, targets, reduction="none", label_smoothing=smoothing)
    per_row = per_row + z_loss * torch.logsumexp(leaf, -1).square()
    (per_row * scale).sum().backward()
    losses = cross_entropy_grad_(logits, targets, scale, smoothing, z_loss)
    torch.testing.assert_close(losses, per_row.detach(), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(logits, leaf.grad, rtol=1e-12, atol=1e-15)  # now the gradient


def test_low_precision_logits_hold_their_gradient_in_their_own_dtype():
    logits, targets, scale = chunk(torch.bfloat16)
    reference = logits.double()
    expected = cross_entropy_grad_torch(reference, targets, scale.double(), 0.0, 0.0)
    losses = cross_entropy_grad_(logits, targets, scale, 0.0, 0.0)
    assert logits.dtype == torch.bfloat16 and losses.dtype == torch.float32
    torch.testing.assert_close(losses.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.double(), reference, rtol=1e-2, atol=1e-3)


def test_fake_tensors_allocate_only_the_losses():
    with FakeTensorMode():
        logits = torch.empty(8, 1000, dtype=torch.bfloat16)
        targets = torch.zeros(8, dtype=torch.int64)
        losses = cross_entropy_grad_(logits, targets, torch.ones(8), 0.0, 0.0)
    assert losses.shape == (8,) and losses.dtype == torch.float32


TRITON_CHECK = textwrap.dedent(
    """
    import torch
    from memfit.apply.cross_entropy_kernel import cross_entropy_grad_torch
    from memfit.apply.cross_entropy_triton import cross_entropy_grad_triton
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for smoothing, z_loss in {settings}:
            logits = (3 * torch.randn(5, 300)).to(dtype)
            targets = torch.tensor([1, 299, 0, 17, 5])
            scale = torch.tensor([0.2, 0.2, 0.0, 0.2, 0.2])
            a, b = logits.clone(), logits.clone()
            # a block smaller than the vocabulary: the online softmax crosses blocks
            la = cross_entropy_grad_triton(a, targets, scale, smoothing, z_loss, block=128)
            lb = cross_entropy_grad_torch(b, targets, scale, smoothing, z_loss)
            torch.testing.assert_close(la, lb, rtol=1e-6, atol=1e-6)
            ulp = 0.0 if dtype == torch.float32 else 2.0**-7  # one bf16 rounding apart
            torch.testing.assert_close(a.float(), b.float(), rtol=ulp, atol=1e-7)
    print("ok")
    """
)


def _release(distribution: str) -> tuple[int, int]:
    major, minor = importlib.metadata.version(distribution).split(".")[:2]
    return int(major), int(minor)


def _interpreter_runs() -> bool:
    # Triton before 3.7 interprets a kernel's integer arguments as one-element arrays and reads
    # them with int(), which NumPy 2.4 refuses (tried: 3.2, 3.3.1, 3.4, 3.5.1, 3.6 fail beside
    # NumPy 2.4.6, 3.6 passes beside 2.3.5, 3.7 and 3.8 pass)
    return _release("triton") >= (3, 7) or _release("numpy") < (2, 4)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
@pytest.mark.skipif(
    importlib.util.find_spec("triton") is not None and not _interpreter_runs(),
    reason="this Triton's CPU interpreter cannot run beside NumPy >= 2.4 (Triton 3.7 can)",
)
def test_triton_kernel_equals_the_pytorch_path_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # Triton's CPU interpreter: no GPU needed
    code = TRITON_CHECK.format(settings=SETTINGS)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
