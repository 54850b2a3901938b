"""Part "micro" of bench/costs.py: what single operator classes cost on the GPU.

* launch: a chain of one-element kernels (device time per kernel) and the host time eager
  PyTorch takes to launch each (Python dispatch included);
* matmul: bf16 matrix products of the shapes the calibration models run, at several numbers
  of rows (micro-batching shrinks them), as achieved FLOP/s;
* elementwise: achieved bandwidth of add, mul, exp and tanh-GELU at sizes from 64 KiB to
  1 GiB in bf16 and float32; Hugging Face's eight-operator gelu_new against one fused GELU;
* reductions and norms: softmax / log_softmax over a 151,936-token vocabulary, LayerNorm,
  RMSNorm as Hugging Face writes it;
* attention: SDPA (flash) forward and backward of the calibration models' shapes;
* optimizer: fused AdamW per parameter; embedding backward of a large vocabulary.
"""

# ruff: noqa: B023  (each closure is timed at once, inside the loop that binds its tensors)
from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cost_harness import Harness
from memfit.apply.cross_entropy_kernel import cross_entropy_grad_torch, triton_available


def run(harness: Harness, record: Callable[[str, dict], None], small: bool) -> None:
    device = harness.device
    bf16, fp32 = torch.bfloat16, torch.float32
    scale = 64 if small else 1  # smoke runs: shapes divided

    x = torch.zeros(1, device=device)
    chain = 20 if small else 2000

    def launches():
        for _ in range(chain):
            x.add_(1)

    harness.sync()
    started = time.perf_counter()
    launches()
    host = (time.perf_counter() - started) / chain  # before the GPU catches up
    record(
        "launch | add_ one element",
        {"per_kernel_s": harness.seconds(launches, 5) / chain, "host_per_op_s": host},
    )
    a = torch.randn(64, 64, device=device)
    record(
        "launch | mm 64x64",
        {"per_kernel_s": harness.seconds(lambda: [a @ a for _ in range(chain)], 5) / chain},
    )

    shapes = [
        (896, 896),
        (896, 4864),
        (4864, 896),
        (896, 151936),
        (2048, 2048),
        (2048, 5632),
        (4096, 14336),
        (14336, 4096),
        (768, 3072),
        (1024, 4096),
    ]
    for k, n in shapes:
        k, n = max(8, k // scale), max(8, n // scale)
        for m in (256, 1024, 4096, 16384):
            m = max(8, m // scale)
            left = torch.randn(m, k, device=device, dtype=bf16)
            right = torch.randn(k, n, device=device, dtype=bf16)
            seconds = harness.seconds(lambda: left @ right)
            record(f"matmul | {m}x{k}x{n}", {"seconds": seconds, "flops": 2 * m * k * n})
    for m in (1024, 4096):  # the head's gradient products: K = vocabulary, and A transposed
        m, v, d = max(8, m // scale), max(8, 151936 // scale), max(8, 896 // scale)
        grad = torch.randn(m, v, device=device, dtype=bf16)
        rows = torch.randn(m, d, device=device, dtype=bf16)
        weight = torch.randn(v, d, device=device, dtype=bf16)
        record(
            f"matmul | grad @ W {m}x{v}x{d}",
            {"seconds": harness.seconds(lambda: grad @ weight), "flops": 2 * m * v * d},
        )
        record(
            f"matmul | grad.T @ rows {v}x{m}x{d}",
            {"seconds": harness.seconds(lambda: grad.t() @ rows), "flops": 2 * m * v * d},
        )

    for dtype in (bf16, fp32):
        for size in (2**16, 2**20, 2**24, 2**28, 2**30):
            numel = max(1024, size // scale // torch.finfo(dtype).bits * 8)
            t = torch.randn(numel, device=device, dtype=dtype)
            u = torch.randn(numel, device=device, dtype=dtype)
            moved = numel * t.element_size()
            for label, fn, passes in (
                ("add", lambda: t + u, 3),
                ("mul_", lambda: t.mul_(1.0), 2),
                ("exp", lambda: torch.exp(t), 2),
                ("gelu tanh", lambda: F.gelu(t, approximate="tanh"), 2),
                ("to other dtype", lambda: t.to(fp32 if dtype == bf16 else bf16), 1.5),
            ):
                seconds = harness.seconds(fn)
                record(
                    f"elementwise | {label} {str(dtype)[6:]} {numel}",
                    {"seconds": seconds, "bytes": int(passes * moved)},
                )
        hidden = torch.randn(
            max(8, 8 * 1024 // scale), max(8, 3072 // scale), device=device, dtype=dtype
        )

        def gelu_new():  # Hugging Face's NewGELUActivation, eight operators
            return (
                0.5
                * hidden
                * (
                    1.0
                    + torch.tanh(
                        math.sqrt(2.0 / math.pi) * (hidden + 0.044715 * torch.pow(hidden, 3.0))
                    )
                )
            )

        record(
            f"fusion | gelu_new eight ops {str(dtype)[6:]}",
            {"seconds": harness.seconds(gelu_new), "bytes": hidden.numel() * hidden.element_size()},
        )
        record(
            f"fusion | one gelu tanh {str(dtype)[6:]}",
            {
                "seconds": harness.seconds(lambda: F.gelu(hidden, approximate="tanh")),
                "bytes": hidden.numel() * hidden.element_size(),
            },
        )

    rows, vocab = max(8, 1024 // scale), max(8, 151936 // scale)
    logits = torch.randn(rows, vocab, device=device, dtype=fp32)
    record(
        "reduction | log_softmax 1024x151936 fp32",
        {
            "seconds": harness.seconds(lambda: torch.log_softmax(logits, -1)),
            "bytes": 2 * logits.numel() * 4,
        },
    )
    record(
        "reduction | softmax 1024x151936 fp32",
        {
            "seconds": harness.seconds(lambda: torch.softmax(logits, -1)),
            "bytes": 2 * logits.numel() * 4,
        },
    )
    record(
        "reduction | amax 1024x151936 fp32",
        {"seconds": harness.seconds(lambda: logits.amax(-1)), "bytes": logits.numel() * 4},
    )
    for tokens, dim in ((4096, 896), (8192, 2048), (8192, 768)):
        tokens, dim = max(8, tokens // scale), max(8, dim // scale)
        h = torch.randn(tokens, dim, device=device, dtype=fp32)
        w = torch.ones(dim, device=device)
        record(
            f"norm | layer_norm {tokens}x{dim}",
            {
                "seconds": harness.seconds(lambda: F.layer_norm(h, (dim,), w)),
                "bytes": 2 * h.numel() * 4,
            },
        )

        def rms():  # Hugging Face's LlamaRMSNorm, five operators
            variance = h.pow(2).mean(-1, keepdim=True)
            return w * (h * torch.rsqrt(variance + 1e-6))

        record(
            f"norm | hf rmsnorm {tokens}x{dim}",
            {"seconds": harness.seconds(rms), "bytes": 2 * h.numel() * 4},
        )

    for batch, heads, seq, dim in (
        (4, 14, 1024, 64),
        (4, 16, 2048, 128),
        (8, 12, 1024, 64),
        (4, 32, 1024, 128),
    ):
        seq = max(8, seq // scale)
        q, k, v = (
            torch.randn(batch, heads, seq, dim, device=device, dtype=bf16, requires_grad=True)
            for _ in range(3)
        )

        def attention():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(torch.ones_like(out))

        record(
            f"attention | sdpa fwd+bwd {batch}x{heads}x{seq}x{dim}",
            {
                "seconds": harness.seconds(attention),
                "flops": 3.5 * 4 * batch * heads * seq * seq * dim / 2,
            },
        )

    numel = max(1024, 2**27 // scale)
    params = [torch.randn(numel, device=device, requires_grad=True)]
    params[0].grad = torch.randn_like(params[0])
    optimizer = torch.optim.AdamW(params, fused=harness.cuda)
    record(
        f"optimizer | fused adamw {numel} params",
        {"seconds": harness.seconds(optimizer.step), "bytes": 28 * numel},
    )
    vocab, dim, tokens = max(8, 151936 // scale), max(8, 896 // scale), max(8, 4096 // scale)
    table = torch.randn(vocab, dim, device=device, requires_grad=True)
    ids = torch.randint(0, vocab, (tokens,), device=device)

    def embedding():
        F.embedding(ids, table).sum().backward()
        table.grad = None

    record(
        f"embedding | fwd+bwd {vocab}x{dim}, {tokens} tokens",
        {"seconds": harness.seconds(embedding), "bytes": 2 * vocab * dim * 4},
    )

    rows, vocab = max(8, 1024 // scale), max(8, 151936 // scale)
    logits = torch.randn(rows, vocab, device=device, dtype=bf16)
    targets = torch.randint(0, vocab, (rows,), device=device)
    weights = torch.full((rows,), 1.0 / rows, device=device)
    moved = 3 * logits.numel() * 2  # read twice, written once
    record(
        "ce kernel | PyTorch ops bf16",
        {
            "seconds": harness.seconds(
                lambda: cross_entropy_grad_torch(logits, targets, weights, 0.0, 0.0)
            ),
            "bytes": moved,
        },
    )
    if harness.cuda and triton_available():
        from memfit.apply.cross_entropy_triton import cross_entropy_grad_triton

        for block, warps in ((2048, 8), (4096, 8), (8192, 16), (16384, 16), (32768, 32)):

            def kernel():
                cross_entropy_grad_triton(
                    logits, targets, weights, 0.0, 0.0, block=block, num_warps=warps
                )

            record(
                f"ce kernel | triton block {block} warps {warps}",
                {"seconds": harness.seconds(kernel), "bytes": moved},
            )
