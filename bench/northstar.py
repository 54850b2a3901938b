"""North star: a 3B model (Llama-3.2-3B shape) trained with exact fp32-master AdamW in 24 GiB.

Run on the GPU machine:  python bench/northstar.py --out DIR [--part bandwidth,host,...]
On a CPU (tiny model, same code paths):  python bench/northstar.py --out DIR --smoke

Parts (in this order; each writes its results into DIR/northstar.json as soon as it has them):
  * bandwidth: pinned host<->device copies (1 GiB), each way alone and both at once;
  * host: the host's memory bandwidth (a float32 copy) and its CPU Adam/AdamW throughput on
    --host-params float32 parameters: ``torch.optim.AdamW(fused=True)`` and foreach with
    float32 gradients, and memfit's host step (bf16 gradients in, bf16 weights out, chunked)
    at several chunk sizes and thread counts;
  * baseline: Hugging Face LlamaForCausalLM (Llama-3.2-3B config, SDPA), fp32 weights, bf16
    autocast, fused AdamW at an 80 GiB cap: batch 2 unmodified (the issue's 16,302 tokens/s),
    and batch 8 with memfit's full checkpointing and chunked loss (the compute the offloaded
    runs do, with the optimizer on the GPU);
  * offload: the same model at a 24 GiB cap with memfit's HostOptimizer (bf16 working weights
    on the GPU, fp32 masters and AdamW state on the host, gradients streamed during backward,
    the host step overlapped), full checkpointing and chunked loss, at --batches; then once
    with the host step skipped (the GPU's and the copies' time alone);
  * compiled: an experimental single-pass host AdamW compiled by torch.compile (C++), if a
    compiler is there.
Steps are timed by wall clock between synchronisations (the host step runs past the GPU's
end of a step and the next step waits for it), median of --steps after --warmup.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.step.host_adam import AdamHyper, HostParam, host_adam_step  # noqa: E402
from memfit.step.host_optimizer import HostOptimizer, offloadable_parameters  # noqa: E402
from models import hf_llama_3b  # noqa: E402

GiB = 1024**3
SEQ = 2048
PARTS = ("bandwidth", "host", "baseline", "offload", "compiled")
REFERENCE_TOKENS_S = 16302  # issue 11: batch 2 at an 80 GiB cap, same H200


def rss() -> dict:
    """This process's resident and peak resident host memory (bytes), from /proc."""
    out = {}
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def clean(cuda: bool) -> None:
    gc.collect()
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restarts VmHWM (the peak resident memory) from the current RSS
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def cap(cuda: bool, gib: float) -> None:
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, gib * GiB / total))


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- bandwidth ------------------------------------------------------------------------------
def bandwidth(args) -> dict:
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


def host(args) -> dict:
    n = int(args.host_params)
    pieces = 40
    size = n // pieces
    out: dict = {"params": size * pieces, "cpu_count": os.cpu_count(), "rows": []}
    big = torch.empty(size * pieces, dtype=torch.float32).uniform_(-1, 1)
    out["copy_GBps"] = copy_bandwidth(big)
    grads = torch.empty_like(big).uniform_(-1e-3, 1e-3)
    grads16 = grads.to(torch.bfloat16)
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
        for chunk in args.chunks:
            state = HostParam(
                big,
                torch.zeros_like(big),
                torch.zeros_like(big),
                torch.zeros((), dtype=torch.float32),
                grads16.clone(),
            )
            hyper = AdamHyper(1e-4, 0.9, 0.999, 1e-8, 0.01, decoupled=True)
            scratch = torch.empty(chunk, dtype=torch.float32)

            def run(state=state, hyper=hyper, scratch=scratch, chunk=chunk):
                state.staging.copy_(grads16[: state.staging.numel()])
                host_adam_step(state, hyper, scratch, chunk, accumulated=False)

            restage = timed(lambda state=state: state.staging.copy_(grads16), 2)
            seconds = timed(run, 2) - restage
            out["rows"].append(
                {
                    "impl": "memfit host step bf16",
                    "threads": threads,
                    "chunk": chunk,
                    "s": seconds,
                    "params_per_s": big.numel() / seconds,
                }
            )
            print(out["rows"][-1], flush=True)
            del state
            gc.collect()
        args.save()
    torch.set_num_threads(os.cpu_count() or 1)
    return out


def compiled(args) -> dict:
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


# --- training steps -------------------------------------------------------------------------
def make_batch(vocab: int, batch: int, seq: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=g).to(device)
    return {"input_ids": ids, "labels": ids.clone()}


def measure(step, batch, args, engine=None, cuda=True) -> dict:
    for _ in range(args.warmup):
        step(batch)
    if engine is not None:
        engine.synchronize()
    clean(cuda)
    times = []
    last = time.perf_counter()
    for _ in range(args.steps):
        step(batch)
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    if engine is not None:
        engine.synchronize()
    step_s = statistics.median(times)
    tokens = batch["input_ids"].numel()
    out = {
        "batch": batch["input_ids"].shape[0],
        "step_s": step_s,
        "step_times": times,
        "tokens_per_s": tokens / step_s,
        "of_reference": tokens / step_s / REFERENCE_TOKENS_S,
        **rss(),
    }
    if cuda:
        out["peak_reserved"] = torch.cuda.max_memory_reserved()
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
    return out


def activation_plan(chunks: int) -> list:
    return [
        memfit.Checkpoint(modules=("model.layers.*",)),
        memfit.ChunkedLoss(chunks=chunks),
    ]


def baseline(args) -> dict:
    cuda, device = not args.smoke, args.device
    out: dict = {"rows": []}
    cap(cuda, 80)
    for label, bs, plan in (
        ("unmodified", 2, []),
        ("full checkpointing + chunked loss", 8, activation_plan(16)),
    ):
        clean(cuda)
        row: dict = {"label": label, "cap_gib": 80}
        try:
            torch.manual_seed(0)
            with torch.device(device):
                model = hf_llama_3b(args.smoke)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            step = memfit.apply(plan, model, optimizer, precision="bf16-mixed", device_type=device)
            batch = make_batch(model.config.vocab_size, bs, args.seq, device)
            row.update(measure(step, batch, args, cuda=cuda))
            del step, optimizer, model, batch
        except Exception:
            row["error"] = traceback.format_exc()[-3000:]
        out["rows"].append(row)
        print(row, flush=True)
        args.save()
    return out


def offload(args) -> dict:
    cuda, device = not args.smoke, args.device
    out: dict = {"cap_gib": args.cap, "threads": args.offload_threads, "rows": []}
    clean(cuda)
    cap(cuda, args.cap)
    before = rss()
    torch.manual_seed(0)
    with torch.device(device):
        model = hf_llama_3b(args.smoke)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = memfit.apply(
        activation_plan(args.loss_chunks), model, optimizer, precision="bf16-mixed",
        device_type=device,
    )  # fmt: skip
    chosen = [(name, p) for name, p, _ in offloadable_parameters(model)]
    out["offloaded_params"] = sum(p.numel() for _, p in chosen)
    out["resident_params"] = sum(p.numel() for p in model.parameters()) - out["offloaded_params"]
    started = time.perf_counter()
    engine = HostOptimizer(model, optimizer, chosen, threads=args.offload_threads)
    engine.attach()
    out["attach_s"] = time.perf_counter() - started
    out["host_state_bytes"] = sum(t.numel() * t.element_size() for t in engine._flat.values())
    out["rss_before"], out["rss_attached"] = before, rss()
    if cuda:
        out["allocated_attached"] = torch.cuda.memory_allocated()
    args.save()
    try:
        for bs in args.batches:
            row: dict = {"label": "offload", "batch": bs}
            try:
                batch = make_batch(model.config.vocab_size, bs, args.seq, device)
                row.update(measure(step, batch, args, engine=engine, cuda=cuda))
            except Exception:
                row["error"] = traceback.format_exc()[-3000:]
                engine.synchronize()
            out["rows"].append(row)
            print(row, flush=True)
            args.save()
        import memfit.step.host_optimizer as module

        real = module.host_adam_step
        module.host_adam_step = lambda *a, **k: None  # the GPU's and the copies' time alone
        try:
            bs = args.batches[min(1, len(args.batches) - 1)]
            row = {"label": "offload without host step", "batch": bs}
            batch = make_batch(model.config.vocab_size, bs, args.seq, device)
            row.update(measure(step, batch, args, engine=engine, cuda=cuda))
        except Exception:
            row["error"] = traceback.format_exc()[-3000:]
        finally:
            module.host_adam_step = real
        out["rows"].append(row)
        print(row, flush=True)
    finally:
        engine.discard()
        del step, optimizer, model, engine
        clean(cuda)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--part", default="bandwidth,host,baseline,offload,compiled")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--host-params", type=float, default=1e9)
    parser.add_argument("--threads", default="8,15")
    parser.add_argument("--chunks", default="262144,1048576,4194304")
    parser.add_argument("--batches", default="4,8,12")
    parser.add_argument("--cap", type=float, default=24.0, help="GiB")
    parser.add_argument("--offload-threads", type=int, default=None)
    parser.add_argument("--loss-chunks", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    args.threads = [int(x) for x in args.threads.split(",")]
    args.chunks = [int(x) for x in args.chunks.split(",")]
    args.batches = [int(x) for x in args.batches.split(",")]
    args.seq = SEQ
    args.device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.host_params = min(args.host_params, 4e6)
        args.threads = [min(t, os.cpu_count() or 1) for t in args.threads]
        args.chunks = [min(c, 1 << 16) for c in args.chunks]
        args.seq = 64
        args.offload_threads = args.offload_threads or 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "smoke": args.smoke,
        "seq": args.seq,
        "errors": [],
    }
    args.save = lambda: (out / "northstar.json").write_text(json.dumps(result, indent=1))
    parts = [p for p in args.part.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    for part in PARTS:
        if part not in parts or (part == "bandwidth" and args.smoke):
            continue
        started = time.perf_counter()
        try:
            result[part] = globals()[part](args)
        except Exception:
            result["errors"].append(f"{part}: {traceback.format_exc()[-3000:]}")
            print(result["errors"][-1], flush=True)
        result.setdefault("part_s", {})[part] = time.perf_counter() - started
        args.save()
        print(f"{part} done in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
