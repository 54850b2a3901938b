"""Accuracy of memfit.estimate (CPU-only path) against real GPU steps.

Run on the GPU machine:  python bench/accuracy.py --out DIR [--only gpt2,hf-gpt2] [--skip-extras]
For each model and precision: the real steady-state peak allocated/reserved (memfit.measure: 3
warm-up steps, then 2 measured) and the prediction of memfit.estimate computed in the same
process on fake CPU tensors (no GPU involved), side by side. Extras: the CUDA context and
library workspaces, SDPA kernel choices against torch's own, and random allocation traces
replayed on the real caching allocator against memfit's simulation.
Writes DIR/accuracy.json (+ diagnostics) and prints a table last.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.measure.run import measure_step  # noqa: E402
from memfit.trace.estimate import trace_step  # noqa: E402
from models import EXTERNAL  # noqa: E402

ZOO = ["gpt2", "gpt2-medium", "llama-1b", "resnet50", "vit-b16", "bert-base"]
PRECISIONS = ["fp32", "bf16-mixed"]
GiB = 1024**3


def clean_gpu() -> None:
    gc.collect()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def compact(trace, marks) -> dict:
    """A recorded trace as plain lists, for offline comparison."""
    return {
        "marks": marks,
        "events": trace.events,
        "allocations": [
            (a.key, a.size, a.category.value, a.phase.value, a.module, a.op, list(a.shape), a.dtype)
            for a in trace.allocations.values()
        ],
    }


def run_case(name: str, precision: str, diagnostics: dict) -> dict:
    if name in EXTERNAL:
        build, spec, loss_fn, forward = EXTERNAL[name]
        model, batch, optimizer = build, spec, "adamw-fused"
    else:
        model, batch, loss_fn, forward, optimizer = name, None, None, None, "adamw"
    row: dict = {"model": name, "precision": precision, "optimizer": optimizer}
    started = time.perf_counter()
    traced = trace_step(
        model,
        batch,
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        device="cuda",
    )
    row["estimate_s"] = time.perf_counter() - started
    predicted = traced.profile
    row["predicted_allocated"] = predicted.peak_allocated
    row["predicted_reserved"] = predicted.peak_reserved
    clean_gpu()
    row["allocated_before"] = torch.cuda.memory_allocated()
    step = measure_step(
        model,
        batch,
        loss_fn=loss_fn,
        forward=forward,
        optimizer=optimizer,
        precision=precision,
        op_probe=True,
    )
    measured = step.profile
    row["measured_allocated"] = measured.peak_allocated
    row["measured_reserved"] = measured.peak_reserved
    row["outside_pytorch"] = measured.outside_pytorch_bytes
    for key in ("allocated", "reserved"):
        row[f"error_{key}"] = row[f"predicted_{key}"] / row[f"measured_{key}"] - 1
    diagnostics[f"{name}/{precision}"] = {
        "predicted": predicted.to_dict(),
        "measured": measured.to_dict(),
        "predicted_trace": compact(traced.trace, traced.marks),
        "measured_trace": compact(step.trace, step.marks),
        "measured_readings": [(p.value, a, r, op, n) for p, a, r, op, n in step.readings],
        "op_costs": [
            (c.phase, c.op, c.before, c.after, c.peak, c.output_bytes) for c in step.op_costs
        ],
    }
    del measured, predicted, traced, step
    clean_gpu()
    return row


def workspace_probe() -> dict:
    clean_gpu()
    out = {}
    x = torch.randn(1024, 1024, device="cuda")
    base = torch.cuda.memory_allocated()
    y = x @ x
    out["fp32_mm_forward_extra"] = torch.cuda.memory_allocated() - base - y.nbytes
    w = torch.randn(1024, 1024, device="cuda", requires_grad=True)
    base = torch.cuda.memory_allocated()
    (x @ w).sum().backward()
    out["mm_backward_extra"] = torch.cuda.memory_allocated() - base - w.grad.nbytes
    xb = x.bfloat16()
    lin = torch.nn.Linear(1024, 1024, device="cuda", dtype=torch.bfloat16)
    base = torch.cuda.memory_allocated()
    z = lin(xb)
    out["bf16_addmm_forward_extra"] = torch.cuda.memory_allocated() - base - z.nbytes
    free, total = torch.cuda.mem_get_info()
    out["process_used_minus_reserved"] = (total - free) - torch.cuda.memory_reserved()
    del x, y, w, xb, lin, z
    clean_gpu()
    return out


def sdpa_grid() -> list[dict]:
    from memfit.devices import local_device
    from memfit.trace.cuda.sdpa import SdpaCall, choose_backend
    from memfit.trace.cuda.stack import DEFAULT_STACK

    names = {0: "math", 1: "flash", 2: "efficient", 3: "cudnn"}
    device = local_device()
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for head in (64, 80, 128, 256):
            for dropout in (0.0, 0.1, 0.125):
                for mask in (None, "bool", "float"):
                    for causal in (False, True):
                        if causal and mask:
                            continue
                        q = torch.randn(
                            2, 4, 256, head, device="cuda", dtype=dtype, requires_grad=True
                        )
                        m = None
                        if mask == "bool":
                            m = torch.ones(256, 256, dtype=torch.bool, device="cuda")
                        elif mask == "float":
                            m = torch.zeros(256, 256, dtype=dtype, device="cuda")
                        real = int(torch._fused_sdp_choice(q, q, q, m, dropout, causal))
                        call = SdpaCall.of(q, q, q, m, dropout, causal, False)
                        ours = choose_backend(call, device, DEFAULT_STACK).value
                        rows.append(
                            {
                                "dtype": str(dtype),
                                "head": head,
                                "dropout": dropout,
                                "mask": mask,
                                "causal": causal,
                                "torch": names.get(real, str(real)),
                                "memfit": ours,
                            }
                        )
    return rows


ALLOC_SCRIPT = r"""
import json, random, sys, torch
random.seed(int(sys.argv[1])); live = {}; out = []
sizes = [random.choice([256, 4096, 300_000, 1 << 20, 1_500_000, 5 << 20, 9 << 20, 12 << 20,
         33 << 20, 100 << 20]) + random.randint(0, 4096) for _ in range(3000)]
for i, size in enumerate(sizes):
    if live and random.random() < 0.45:
        key = random.choice(list(live)); del live[key]; out.append(("free", key))
    else:
        live[i] = torch.empty(size, dtype=torch.uint8, device="cuda")
        out.append(("alloc", i, size))
    out[-1] = out[-1] + (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())
print(json.dumps(out))
"""


def allocator_check() -> list[dict]:
    from memfit.trace.allocator import AllocatorSettings, CachingAllocatorSim

    rows = []
    for conf, settings in (
        ("", AllocatorSettings()),
        ("expandable_segments:True", AllocatorSettings(expandable_segments=True)),
        ("max_split_size_mb:64", AllocatorSettings(max_split_size_mb=64)),
    ):
        for seed in (1, 2):
            env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": conf}
            text = subprocess.run(
                [sys.executable, "-c", ALLOC_SCRIPT, str(seed)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            sim = CachingAllocatorSim(settings)
            worst_alloc = worst_res = 0
            events = json.loads(text)
            for event in events:
                if event[0] == "alloc":
                    sim.malloc(event[1], event[2])
                else:
                    sim.free(event[1])
                worst_alloc = max(worst_alloc, abs(sim.allocated - event[-2]))
                worst_res = max(worst_res, abs(sim.reserved - event[-1]))
            rows.append(
                {
                    "conf": conf or "default",
                    "seed": seed,
                    "events": len(events),
                    "max_abs_error_allocated": worst_alloc,
                    "max_abs_error_reserved": worst_res,
                    "final_reserved_real": events[-1][-1],
                    "final_reserved_sim": sim.reserved,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="")
    parser.add_argument("--skip-extras", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "total_memory": torch.cuda.get_device_properties(0).total_memory,
        "rows": [],
        "errors": [],
    }
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    result["context_bytes"] = total - free
    if not args.skip_extras:
        for key, fn in (
            ("workspaces", workspace_probe),
            ("sdpa", sdpa_grid),
            ("allocator", allocator_check),
        ):
            try:
                result[key] = fn()
            except Exception:
                result["errors"].append(f"{key}: {traceback.format_exc()}")
    names = ZOO + list(EXTERNAL)
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    diagnostics: dict = {}
    for name in names:
        for precision in PRECISIONS:
            try:
                row = run_case(name, precision, diagnostics)
                result["rows"].append(row)
                print(
                    f"{name:12s} {precision:10s} alloc {row['error_allocated']:+.2%} "
                    f"reserved {row['error_reserved']:+.2%}",
                    flush=True,
                )
            except Exception:
                result["errors"].append(f"{name}/{precision}: {traceback.format_exc()}")
                clean_gpu()
            (out / "accuracy.json").write_text(json.dumps(result, indent=1))
    with gzip.open(out / "diagnostics.json.gz", "wt") as handle:
        json.dump(diagnostics, handle)
    print(
        f"\n{'model':12s} {'precision':10s} {'measured alloc':>15s} {'predicted':>10s} "
        f"{'err':>7s} {'measured res':>13s} {'predicted':>10s} {'err':>7s} {'est s':>6s}"
    )
    for row in result["rows"]:
        print(
            f"{row['model']:12s} {row['precision']:10s} "
            f"{row['measured_allocated'] / GiB:14.2f}G {row['predicted_allocated'] / GiB:9.2f}G "
            f"{row['error_allocated']:+7.2%} {row['measured_reserved'] / GiB:12.2f}G "
            f"{row['predicted_reserved'] / GiB:9.2f}G {row['error_reserved']:+7.2%} "
            f"{row['estimate_s']:6.2f}"
        )
    summarize(result)
    (out / "accuracy.json").write_text(json.dumps(result, indent=1))
    for key, value in result.get("summary", {}).items():
        print(f"{key}: {value}")
    for error in result["errors"]:
        print("ERROR", error[-600:])


def summarize(result: dict) -> None:
    """Median and worst absolute relative error, the figures the targets are stated in."""
    import statistics

    rows = result["rows"]
    if not rows:
        return
    summary = {}
    for key in ("allocated", "reserved"):
        errors = [abs(r[f"error_{key}"]) for r in rows]
        summary[f"{key}_median_abs_error"] = f"{statistics.median(errors):.3%}"
        summary[f"{key}_worst_abs_error"] = f"{max(errors):.3%}"
    summary["estimate_s_max"] = f"{max(r['estimate_s'] for r in rows):.2f}"
    result["summary"] = summary


if __name__ == "__main__":
    main()
