"""North star: a 3B model (Llama-3.2-3B shape) trained with exact fp32-master AdamW in 24 GiB.

Run on the GPU machine:  python bench/northstar.py --out DIR [--part check,offload,plans,...]
On a CPU (small models, the same code paths):  python bench/northstar.py --out DIR --smoke

Parts (in this order; each writes its results into DIR/northstar.json as soon as it has them):
  * bandwidth, host: the machine (bench/northstar_host.py; compiled, last: an experiment);
  * baseline: Hugging Face LlamaForCausalLM (Llama-3.2-3B config, SDPA), fp32 weights, bf16
    autocast, fused AdamW at an 80 GiB cap: batch 2 unmodified (the issue's 16,302 tokens/s),
    and batch 8 with memfit's full checkpointing and chunked loss;
  * check: the CUDA path of the offload techniques against the plain step on a tiny model;
  * plans, frontier: memfit.plan's own plans, measured (bench/northstar_plans.py);
  * offload: hand-made plans at a 24 GiB cap (--configs): full checkpointing of every layer
    (``act``: with the checkpoint boundaries in host memory), chunked loss, the optimizer on
    the host, at several batches, host thread counts, or with the host step skipped.
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
import northstar_host  # noqa: E402
import northstar_plans  # noqa: E402
from memfit.techniques import technique_label  # noqa: E402
from models import hf_llama_3b  # noqa: E402

GiB = 1024**3
SEQ = 2048
PARTS = ("bandwidth", "host", "baseline", "check", "plans", "frontier", "offload", "compiled")
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


def reset_peak_rss() -> None:
    """Restart VmHWM (the peak resident memory) from the current RSS."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


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
                model = hf_llama_3b("tiny" if args.smoke else "full")
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


def offload_plan(kind: str, layers: str, chunks: int) -> list:
    """memfit's techniques for the offloaded step: full checkpointing of every layer (with the
    checkpoint boundaries in host memory for ``act``), chunked loss, optimizer on the host."""
    plan: list = [memfit.Checkpoint(modules=(layers,))]
    if kind == "act":
        plan.append(memfit.OffloadActivations(modules=(layers,)))
    return plan + [memfit.ChunkedLoss(chunks=chunks), memfit.OffloadOptimizer()]


def parse_configs(text: str) -> dict[str, list[tuple[int, dict]]]:
    """``"ckpt:8,ckpt:8:t8,act:16:nohost"`` -> runs by plan kind: (batch, options)."""
    runs: dict[str, list[tuple[int, dict]]] = {}
    for item in filter(None, text.split(",")):
        kind, batch, *flags = item.split(":")
        options: dict = {"nohost": "nohost" in flags}
        for flag in flags:
            if flag.startswith("t"):
                options["threads"] = int(flag[1:])
        runs.setdefault(kind, []).append((int(batch), options))
    return runs


def offload(args) -> dict:
    import memfit.step.host_optimizer as host_module
    from memfit.step.host_worker import HostWorker

    cuda, device = not args.smoke, args.device
    out: dict = {"cap_gib": args.cap, "runs": []}
    for kind, runs in parse_configs(args.configs).items():
        clean(cuda)
        cap(cuda, args.cap)
        before = rss()
        torch.manual_seed(0)
        with torch.device(device):
            model = hf_llama_3b("tiny" if args.smoke else "full")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        started = time.perf_counter()
        plan = offload_plan(kind, "model.layers.*", args.loss_chunks)
        step = memfit.apply(plan, model, optimizer, precision="bf16-mixed", device_type=device)
        engine = step.host_optimizer
        setup = {
            "kind": kind,
            "plan": [technique_label(t) for t in plan],
            "apply_s": time.perf_counter() - started,
            "offloaded_params": sum(p.numel() for p in engine._entries),
            "host_bytes_predicted": engine.host_bytes(),
            "rss_before": before,
            "rss_applied": rss(),
            "threads": engine.threads,
        }
        if cuda:
            setup["allocated_applied"] = torch.cuda.memory_allocated()
        out["runs"].append(setup)
        args.save()
        real = host_module.host_adam_step
        try:
            for bs, options in runs:
                row: dict = {"kind": kind, "batch": bs, **options}
                threads = options.get("threads")
                if threads is not None and threads != engine.threads:
                    engine._worker.close()
                    engine._worker = HostWorker(threads)
                if options["nohost"]:  # the GPU's and the copies' time alone
                    host_module.host_adam_step = lambda *a, **k: None
                try:
                    clean(cuda)
                    batch = make_batch(model.config.vocab_size, bs, args.seq, device)
                    row.update(measure(step, batch, args, engine=engine, cuda=cuda))
                    row["rss_over_before"] = row.get("VmHWM", 0) - before.get("VmRSS", 0)
                except Exception:
                    row["error"] = traceback.format_exc()[-2500:]
                    engine.synchronize()
                finally:
                    host_module.host_adam_step = real
                    if threads is not None and threads != engine.threads:
                        engine._worker.close()
                        engine._worker = HostWorker(engine.threads)
                out["runs"].append(row)
                print({k: v for k, v in row.items() if k != "error"}, row.get("error", "")[-300:])
                args.save()
        finally:
            engine.discard()
            del step, optimizer, model, engine
            clean(cuda)
    return out


def check(args) -> dict:
    """The CUDA path against the plain step on a small model: losses and float32 masters after
    a few steps (equal to rounding: the host's CPU kernel against the GPU's), and whether undo
    gives float32 weights back on the GPU."""
    device = args.device
    results = {}
    for kind in ("ckpt", "act"):
        models = []
        for _ in range(2):
            torch.manual_seed(0)
            with torch.device(device):
                models.append(hf_llama_3b("tiny"))
        reference, offloaded = models
        ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, fused=True)
        off_opt = torch.optim.AdamW(offloaded.parameters(), lr=1e-3, fused=True)
        layers = "model.layers.*"
        plan = offload_plan(kind, layers, 4)
        ref_step = memfit.apply(plan[:-1], reference, ref_opt, precision="bf16-mixed",
                                device_type=device)  # fmt: skip
        off_step = memfit.apply(plan, offloaded, off_opt, precision="bf16-mixed",
                                device_type=device)  # fmt: skip
        losses = []
        for i in range(4):
            batch = make_batch(reference.config.vocab_size, 4, 256, device)
            batch["input_ids"] = (batch["input_ids"] + i) % reference.config.vocab_size
            losses.append((float(ref_step(batch)), float(off_step(batch))))
        masters = off_step.host_optimizer.master_state_dict()
        diff = max(
            (masters[n] - p.detach().cpu()).abs().max().item()
            for n, p in reference.named_parameters()
            if n in masters
        )
        memfit.apply.undo_all(offloaded)
        back = all(
            p.dtype == torch.float32 and p.device.type == device for p in offloaded.parameters()
        )
        results[kind] = {"losses": losses, "max_master_diff": diff, "undo_ok": back}
        print(kind, results[kind], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--part", default="check,plans,frontier,offload")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--host-params", type=float, default=1e9)
    parser.add_argument("--threads", default="8,15")
    parser.add_argument(
        "--configs",
        default="act:8:nohost,act:16:nohost,act:16:t8",
        help="offload runs KIND:BATCH[:tN][:nohost]; KIND ckpt or act (checkpoint boundaries "
        "offloaded too); tN: N host threads; nohost: skip the host step (GPU and copies only)",
    )
    parser.add_argument(
        "--cap", type=float, default=None, help="GiB (default 24; 0.45 with --smoke)"
    )
    parser.add_argument(
        "--same-as",
        default=None,
        help="plans part: an earlier run's northstar.json, whose measured plans are reused",
    )
    parser.add_argument("--plan-batches", default="8,16")
    parser.add_argument(
        "--allows",
        default="default,pure_bf16",
        help="plans part: comma-separated technique sets, 'default' (exact techniques) or "
        "extra names joined by '+' (e.g. default,pure_bf16,low_bit_optimizer)",
    )
    parser.add_argument("--loss-chunks", type=int, default=16)
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="plans part: skip the plans that would start with less than 60 s of this left",
    )
    parser.add_argument(
        "--thread-variants",
        default="",
        help="plans part, last: the default plan of the first batch again with these host "
        "thread counts (comma-separated)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="plans part: record every allocation of each measured plan (no stacks) from "
        "before its model is built to its last timed step, written to "
        "DIR/northstar_b<batch>_snapshot.pickle (to replay memfit's allocator simulation)",
    )
    args = parser.parse_args()
    started_at = time.perf_counter()
    args.left_s = lambda: (
        float("inf")
        if args.deadline_s is None
        else args.deadline_s - (time.perf_counter() - started_at)
    )
    args.threads = [int(x) for x in args.threads.split(",")]
    args.seq = SEQ
    args.plan_batches = [int(x) for x in args.plan_batches.split(",")]
    args.allows = [x for x in args.allows.split(",") if x]
    args.thread_variants = [int(x) for x in args.thread_variants.split(",") if x]
    args.device = "cpu" if args.smoke else "cuda"
    if args.cap is None:  # the smoke model's state outweighs 0.45 GiB: the offload paths run
        args.cap = 0.45 if args.smoke else 24.0
    if args.smoke:
        args.host_params = min(args.host_params, 4e6)
        args.threads = [min(t, os.cpu_count() or 1) for t in args.threads]
        args.seq = 64
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.out_dir = out
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
        if part not in parts or (part in ("bandwidth", "frontier") and args.smoke):
            continue
        started = time.perf_counter()
        try:
            if part in ("plans", "frontier"):
                result[part] = getattr(northstar_plans, part)(args, sys.modules[__name__])
            elif part in ("bandwidth", "host", "compiled"):
                result[part] = getattr(northstar_host, part)(args)
            else:
                result[part] = globals()[part](args)
        except Exception:
            result["errors"].append(f"{part}: {traceback.format_exc()[-3000:]}")
            print(result["errors"][-1], flush=True)
        result.setdefault("part_s", {})[part] = time.perf_counter() - started
        args.save()
        print(f"{part} done in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
