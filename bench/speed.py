"""How long estimating and planning llama-1b take on this (CPU-only) machine.

python bench/speed.py --out DIR  ->  DIR/speed_<host cores>cpu.json, a table last

Each figure comes from a fresh Python process (the import of torch excluded from the in-process
figures, everything included in the command-line ones), three runs, median reported:
  * memfit.estimate("llama-1b") (bs 4, seq 2048, fp32, AdamW, for an H100), first call;
  * PyTorch's MemTracker on the same model and batch on fake CPU tensors, side by side (the tool
    the estimate issue compares against);
  * memfit.plan("llama-1b", budget="16GiB") (bf16-mixed, fused AdamW), first call; and with
    the default (multi-tensor) AdamW, which the planner first makes fused (one more trace);
  * the commands `memfit estimate llama-1b`,
    `memfit plan llama-1b --budget 16GiB --optimizer adamw-fused` and the issue's
    `memfit plan llama-1b --budget 16GiB --device h100-80gb`, end to end.
Targets (issues 2 and 3): estimate < 3 s, plan < 10 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# torch is imported before the clock starts, as in MEMTRACKER: a user's process has it already
ESTIMATE = """
import time, torch, memfit
t = time.perf_counter()
memfit.estimate("llama-1b", device="h100-80gb", precision="fp32", optimizer="adamw")
print(time.perf_counter() - t)
"""

PLAN = """
import time, torch, memfit
t = time.perf_counter()
memfit.plan(
    "llama-1b", budget="16GiB", device="h100-80gb", precision="bf16-mixed", optimizer="adamw-fused"
)
print(time.perf_counter() - t)
"""

PLAN_DEFAULT_OPTIMIZER = PLAN.replace('optimizer="adamw-fused"', 'optimizer="adamw"')

MEMTRACKER = """
import time, torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker
from memfit import zoo
entry = zoo.get("llama-1b")
t = time.perf_counter()
with FakeTensorMode():
    model = entry.build()
    optimizer = torch.optim.AdamW(model.parameters())
    batch = entry.make_batch()
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        model(**batch).loss.backward()  # the zoo's batches carry labels
        optimizer.step()
    tracker.get_tracker_snapshot("peak")
print(time.perf_counter() - t)
"""


def _python(code: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def _command(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "memfit.cli", *args], check=True, capture_output=True, cwd=ROOT
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cases = {
        "estimate llama-1b (in process)": lambda: _python(ESTIMATE),
        "MemTracker llama-1b (in process)": lambda: _python(MEMTRACKER),
        "plan llama-1b 16GiB (in process)": lambda: _python(PLAN),
        "plan llama-1b 16GiB, default AdamW (in process)": lambda: _python(PLAN_DEFAULT_OPTIMIZER),
        "memfit estimate llama-1b (command)": lambda: _command(
            ["estimate", "llama-1b", "--device", "h100-80gb"]
        ),
        "memfit plan llama-1b --budget 16GiB (command)": lambda: _command(
            [
                "plan",
                "llama-1b",
                "--budget",
                "16GiB",
                "--device",
                "h100-80gb",
                "--optimizer",
                "adamw-fused",
            ]
        ),
        "memfit plan llama-1b --budget 16GiB --device h100-80gb (command)": lambda: _command(
            ["plan", "llama-1b", "--budget", "16GiB", "--device", "h100-80gb"]
        ),
    }
    results = {}
    for name, case in cases.items():
        runs = [case() for _ in range(args.runs)]
        results[name] = {"median_s": statistics.median(runs), "runs_s": runs}
        print(f"{name:<48} {statistics.median(runs):6.2f} s", flush=True)
    import torch

    data = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"speed_{os.cpu_count()}cpu.json"
    path.write_text(json.dumps(data, indent=1))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
