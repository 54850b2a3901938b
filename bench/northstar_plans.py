"""bench/northstar.py's final parts: memfit's own plans, made on this machine and measured.

* plans: ``memfit.plan`` for Hugging Face LlamaForCausalLM (Llama-3.2-3B shape, seq 2048) at a
  24 GiB budget on the local GPU (this host's memory and cores), for each batch of --plan-batches
  and each --allows set ("default": the exact techniques only; or names such as pure_bf16),
  then applied with ``memfit.apply`` to a fresh model at the 24 GiB cap and measured: median
  step time and tokens/s against 16,302, peak reserved (no cache emptied: the steady state the
  prediction describes) against the predicted, and host memory memfit added (peak resident
  memory during the steps minus before ``apply``) against the predicted; with the optimizer on
  the host, also the host's busy time per step (its parameters per second beside training) and
  how long forwards waited for it. A plan identical to one measured already (the same batch
  under another allow set) is not measured again. Last, --thread-variants: the first batch's
  default plan again with other host thread counts;
* frontier: bench/frontier.py's Hugging Face LLaMA-1B (bs 4, seq 2048): HF full checkpointing
  measured, then memfit's plan at that measured peak (the offloaded checkpoint boundaries now
  among its choices) measured; target: at least 10% faster than HF full checkpointing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import frontier as bench_frontier
import memfit
from memfit.step.host_optimizer import HostOptimizer
from memfit.techniques import OffloadOptimizer, default_allow
from models import EXTERNAL, hf_llama_3b, llama_3b_config

REFERENCE_TOKENS_S = 16302


def _fresh(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def plans(args, ns) -> dict:
    """``ns`` is bench/northstar.py (its helpers: model, batch, caps, RSS)."""
    cuda, device = not args.smoke, args.device
    out: dict = {"cap_gib": args.cap, "rows": []}
    size = "small" if args.smoke else "full"
    vocab = llama_3b_config(size).vocab_size
    target = memfit.get_device("cuda") if cuda else memfit.get_device("h200")
    measured_plans: dict[str, dict] = {}  # the same plan under another allow: measured once
    made: dict[tuple[str, int], Any] = {}
    if args.same_as:  # plans measured by an earlier run (bench/northstar_final.sh's piece 2)
        with contextlib.suppress(OSError, ValueError):
            earlier = json.loads(Path(args.same_as).read_text())
            for row in earlier.get("plans", {}).get("rows", []):
                if "measured" in row and "threads" not in row:
                    measured_plans[_key(row)] = row
    for allow in args.allows:
        for bs in args.plan_batches:
            row: dict = {"batch": bs, "allow": allow}
            spec = f"input_ids=int64[{bs},{args.seq}]<{vocab} labels=int64[{bs},{args.seq}]<{vocab}"
            if args.left_s() < 45:  # planning, applying and six steps of llama-3b: ~40 s
                row["skipped"] = f"{args.left_s():.0f} s left of --deadline-s"
                out["rows"].append(row)
                continue
            try:
                started = time.perf_counter()
                plan = memfit.plan(
                    lambda: hf_llama_3b(size),
                    spec,
                    budget=f"{args.cap}GiB",
                    device=target,
                    optimizer="adamw",
                    precision="bf16-mixed",
                    **({} if allow == "default" else {"allow": _allowed(allow)}),
                )
                row.update(
                    plan=plan.label,
                    techniques=plan.to_dict()["techniques"],
                    notes=list(plan.notes),
                    plan_s=time.perf_counter() - started,
                    predicted_reserved=plan.profile.peak_reserved,
                    predicted_allocated=plan.profile.peak_allocated,
                    predicted_host=plan.profile.host_peak,
                    predicted_host_bytes=dict(plan.profile.host_bytes),
                    predicted_step_s=plan.step_time_s,
                )
                print({k: v for k, v in row.items() if k != "techniques"}, flush=True)
                args.save()
                made[(allow, bs)] = plan
                key = _key(row)
                if key in measured_plans:
                    row["same_plan_as"] = measured_plans[key]["allow"]  # measured once
                    row["measured"] = measured_plans[key]["measured"]
                else:
                    row["measured"] = _measure_plan(plan, bs, size, args, ns, cuda, device)
                    measured_plans[key] = row
                measured = row["measured"]
                if "peak_reserved" in measured:  # on a GPU (a CPU run's host memory is all)
                    reserved = measured["peak_reserved"]
                    row["reserved_error"] = reserved / plan.profile.peak_reserved - 1
                    row["within_cap"] = reserved <= args.cap * 2**30
                if plan.profile.host_peak:
                    row["host_error"] = measured["host_added"] / plan.profile.host_peak - 1
            except Exception:
                row["error"] = traceback.format_exc()[-3000:]
            out["rows"].append(row)
            print({k: v for k, v in row.items() if k not in ("techniques", "error")},
                  row.get("error", "")[-400:], flush=True)  # fmt: skip
            args.save()
    for threads in args.thread_variants:  # diagnostics: the host step's thread count
        out["rows"].append(_thread_variant(made, threads, size, args, ns, cuda, device))
        args.save()
    return out


def _thread_variant(made, threads: int, size: str, args, ns, cuda: bool, device: str) -> dict:
    bs = args.plan_batches[0]
    row: dict = {"batch": bs, "allow": "default", "threads": threads}
    plan = made.get(("default", bs))
    if plan is None or not any(isinstance(t, OffloadOptimizer) for t in plan.techniques):
        row["skipped"] = "no default plan with the optimizer on the host"
    elif args.left_s() < 35:  # no planning: apply and six steps
        row["skipped"] = f"{args.left_s():.0f} s left of --deadline-s"
    else:
        techniques = [
            dataclasses.replace(t, threads=threads) if isinstance(t, OffloadOptimizer) else t
            for t in plan.techniques
        ]
        row["plan"] = plan.label
        try:
            row["measured"] = _measure_plan(
                techniques, bs, size, args, ns, cuda, device, precision="bf16-mixed"
            )
        except Exception:
            row["error"] = traceback.format_exc()[-3000:]
    print({k: v for k, v in row.items() if k != "error"}, row.get("error", "")[-400:], flush=True)
    return row


def _key(row: dict) -> str:
    return f"{row['batch']}:{json.dumps(row['techniques'], sort_keys=True)}"


def _allowed(extra: str) -> tuple[str, ...]:
    return default_allow() + tuple(x for x in extra.split("+") if x)


def _measure_plan(
    plan, bs: int, size: str, args, ns, cuda: bool, device: str, precision: str | None = None
) -> dict:
    _fresh(cuda)
    ns.cap(cuda, args.cap)
    torch.manual_seed(0)
    if cuda and args.snapshot:  # from an empty allocator, to replay memfit's simulation on it
        torch.cuda.memory._record_memory_history(max_entries=5_000_000, context=None)
    with torch.device(device):
        model = hf_llama_3b(size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    before = ns.rss().get("VmRSS", 0)
    started = time.perf_counter()
    step = memfit.apply(plan, model, optimizer, device_type=device, precision=precision)
    applied_s = time.perf_counter() - started
    batch = ns.make_batch(model.config.vocab_size, bs, args.seq, device)
    try:
        for _ in range(args.warmup):
            step(batch)
        engine = step.host_optimizer
        # no drain of the host's queue: the timed steps start in the steady state
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()  # no empty_cache: the steady state as is
        ns.reset_peak_rss()
        busy = engine.busy_s() if engine is not None else 0.0
        waited = engine.forward_wait_s if engine is not None else 0.0
        adam = engine.adam_s if engine is not None else 0.0
        times, last = [], time.perf_counter()
        for _ in range(args.steps):
            step(batch)
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last)
            last = now
        if engine is not None:
            engine.synchronize()
        times.sort()
        step_s = times[len(times) // 2]
        tokens = batch["input_ids"].numel()
        result = {
            "apply_s": applied_s,
            "step_s": step_s,
            "step_times": times,
            "tokens_per_s": tokens / step_s,
            "of_reference": tokens / step_s / REFERENCE_TOKENS_S,
            "host_added": ns.rss().get("VmHWM", 0) - before,
        }
        if engine is not None:  # where the time goes: the host's work beside training
            result["host_busy_per_step_s"] = (engine.busy_s() - busy) / args.steps
            result["forward_wait_per_step_s"] = (engine.forward_wait_s - waited) / args.steps
            result["host_params_per_s"] = engine.offloaded_params() / max(
                result["host_busy_per_step_s"], 1e-9
            )
            result["host_threads"] = engine.threads
            result["host_adam_per_step_s"] = (engine.adam_s - adam) / args.steps
        if cuda:
            result["peak_reserved"] = torch.cuda.max_memory_reserved()
            result["peak_allocated"] = torch.cuda.max_memory_allocated()
            result["alloc_retries"] = torch.cuda.memory_stats().get("num_alloc_retries", 0)
        if cuda and args.snapshot:  # every event since the model was built, no stacks
            path = args.out_dir / f"northstar_b{bs}_snapshot.pickle"
            torch.cuda.memory._dump_snapshot(str(path))
            torch.cuda.memory._record_memory_history(enabled=None)
            result["snapshot"] = path.name
        return result
    finally:
        engine = step.host_optimizer
        if isinstance(engine, HostOptimizer):
            engine.discard()  # undo would bring 50 GB of state back to a 24 GiB GPU
        del step, optimizer, model, batch
        _fresh(cuda)  # the pinned host buffers are unregistered as they are collected here
        if cuda:
            torch.zeros(1, device=device).add_(1)  # the CUDA context is healthy for the next


def frontier(args, ns) -> dict:
    """LLaMA-1B at full checkpointing's memory: memfit's plan against HF full checkpointing."""
    name = "hf-llama-1b"
    builder, spec, _, _ = EXTERNAL[name]
    ns.cap(True, 140)

    def hf_full(model):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    out: dict = {"model": name}
    out["hf_full"] = full = bench_frontier.measure_plan(name, prepare=hf_full)
    print("hf full", full, flush=True)
    args.save()
    started = time.perf_counter()
    plan = memfit.plan(
        builder,
        spec,
        budget=full["peak_reserved"],
        device=memfit.get_device("cuda"),
        optimizer=bench_frontier.OPTIMIZER,
        precision=bench_frontier.PRECISION,
    )
    out["plan"] = {
        "label": plan.label,
        "techniques": plan.to_dict()["techniques"],
        "plan_s": time.perf_counter() - started,
        "predicted_reserved": plan.profile.peak_reserved,
        "predicted_step_s": plan.step_time_s,
    }
    args.save()
    out["plan"]["measured"] = measured = bench_frontier.measure_plan(name, plan=plan)
    out["speedup_vs_hf_full"] = full["step_s"] / measured["step_s"] - 1
    out["within_budget"] = measured["peak_reserved"] <= full["peak_reserved"]
    print(out["plan"]["label"], measured, out["speedup_vs_hf_full"], flush=True)
    return out
