"""bench/northstar.py's probes of the machine: pinned copies, the host's CPU AdamW.

* bandwidth: pinned host<->device copies (1 GiB), each way alone and both at once;
* host: the host's memory bandwidth (a float32 copy) and its CPU Adam/AdamW throughput on
  --host-params float32 parameters: ``torch.optim.AdamW(fused=True)`` and foreach, and
  memfit's host step, at --threads;
* compiled: an experimental single-pass AdamW (bf16 gradient in, bf16 weights out) compiled by
  torch.compile for the CPU (measured once: 4.1e9 params/s, 67 s to compile, on the H200 host).
"""

from __future__ import annotations

import gc
import os
import statistics
import time

import torch

from memfit.step.host_adam import AdamHyper, HostParam, host_adam_step

GiB = 1024**3


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- bandwidth ------------------------------------------------------------------------------
def bandwidth(args, ns=None) -> dict:
    size = GiB if not args.smoke else 1 << 20
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")
    dev2 = torch.empty(size, dtype=torch.uint8, device="cuda")
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    host2 = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()

    def copy(d2h: bool, h2d: bool):
        def run():
            if d2h:
                with torch.cuda.stream(s1):
                    host.copy_(dev, non_blocking=True)
            if h2d:
                with torch.cuda.stream(s2):
                    dev2.copy_(host2, non_blocking=True)
            torch.cuda.synchronize()

        return run

    out = {"bytes": size}
    for label, d2h, h2d in (("d2h", 1, 0), ("h2d", 0, 1), ("both", 1, 1)):
        seconds = timed(copy(bool(d2h), bool(h2d)), 5)
        out[f"{label}_GBps"] = size * (d2h + h2d) / seconds / 1e9
    return out


# --- host -----------------------------------------------------------------------------------
def copy_bandwidth(source: torch.Tensor) -> float:
    """Host memory bandwidth of a copy (bytes read + written per second)."""
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), 3)
    return 2 * source.numel() * source.element_size() / seconds / 1e9


def host(args, ns=None) -> dict:
    n = int(args.host_params)
    pieces = 40
    size = n // pieces
    out: dict = {"params": size * pieces, "cpu_count": os.cpu_count(), "rows": []}
    big = torch.empty(size * pieces, dtype=torch.float32).uniform_(-1, 1)
    out["copy_GBps"] = copy_bandwidth(big)
    grads = torch.empty_like(big).uniform_(-1e-3, 1e-3)
    params = [big[i * size : (i + 1) * size] for i in range(pieces)]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, kwargs in (("torch fused fp32 grads", {"fused": True}), ("torch foreach", {})):
            ps = [torch.nn.Parameter(p) for p in params]
            for p, g in zip(ps, grads.split(size), strict=False):
                p.grad = g
            optimizer = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.01, **kwargs)
            seconds = timed(optimizer.step, 2)
            out["rows"].append(
                {"impl": label, "threads": threads, "s": seconds, "params_per_s": n / seconds}
            )
            print(out["rows"][-1], flush=True)
            del optimizer, ps
            gc.collect()
        hyper = AdamHyper(1e-4, 0.9, 0.999, 1e-8, 0.01, decoupled=True)
        states = [
            HostParam(
                p, torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), dtype=torch.float32), g
            )
            for p, g in zip(params, grads.split(size), strict=True)
        ]

        def run(states=states, hyper=hyper):
            for state in states:
                host_adam_step(state, hyper, accumulated=False)

        seconds = timed(run, 2)
        row = {"impl": "memfit host step", "threads": threads, "s": seconds}
        out["rows"].append({**row, "params_per_s": n / seconds})
        print(out["rows"][-1], flush=True)
        del states
        gc.collect()
        args.save()
    torch.set_num_threads(os.cpu_count() or 1)
    return out


def compiled(args, ns=None) -> dict:
    """An experimental single-pass AdamW (bf16 gradient in, bf16 weights out) compiled for the
    CPU: the bound a fused host kernel could reach."""

    def update(p, g16, m, v, lr, wd, b1, b2, eps, bc1, bc2_sqrt):
        g = g16.float()
        p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).add_((1 - b2) * g * g)
        p.sub_(lr / bc1 * m / (v.sqrt() / bc2_sqrt + eps))
        g16.copy_(p)

    n = int(args.host_params)
    p = torch.empty(n, dtype=torch.float32).uniform_(-1, 1)
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    g16 = torch.empty(n, dtype=torch.bfloat16).uniform_(-1e-3, 1e-3)
    scalars = [torch.tensor(x) for x in (1e-4, 0.01, 0.9, 0.999, 1e-8, 0.1, 0.03)]
    started = time.perf_counter()
    fn = torch.compile(update, dynamic=False)
    fn(p, g16, m, v, *scalars)
    out = {"compile_s": time.perf_counter() - started, "rows": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        seconds = timed(lambda: fn(p, g16, m, v, *scalars), 3)
        out["rows"].append({"threads": threads, "s": seconds, "params_per_s": n / seconds})
        print(out["rows"][-1], flush=True)
    torch.set_num_threads(os.cpu_count() or 1)
    return out
