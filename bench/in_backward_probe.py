"""Diagnostic: what the optimizer step inside backward costs, and whether stepping a bucket of
parameters at a time (fewer ``Optimizer.step`` calls) removes it.

Hugging Face LLaMA-1B (bench/models.py, the frontier's model), batch 4 x 2048, bf16 autocast,
Hugging Face full checkpointing, AdamW (fused or foreach), on a CUDA GPU:
  * plain: the optimizer's step after backward;
  * per-parameter: memfit's OptimizerInBackward (one ``step()`` per parameter);
  * buckets of N MiB: the same hooks, but ``step()`` once the gradients of a bucket of
    consecutive parameters (reverse order) are all complete.
Median step time (wall clock between synchronisations) over --steps after --warmup, peak
allocated and reserved. Writes DIR/in_backward_probe.json.

    python bench/in_backward_probe.py --out DIR
    python bench/in_backward_probe.py --out DIR --smoke     # a CPU, a tiny LLaMA
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from models import CALIBRATION  # noqa: E402

MiB = 1 << 20


def bucketed_in_backward(optimizer: torch.optim.Optimizer, bucket_bytes: int) -> Any:
    """Hooks that step each bucket of parameters once all its gradients are complete."""
    handles = []
    for index, group in enumerate(optimizer.param_groups):
        params = [p for p in group["params"] if p.requires_grad][::-1]
        buckets: list[list[torch.Tensor]] = [[]]
        size = 0
        for p in params:
            if size >= bucket_bytes:
                buckets.append([])
                size = 0
            buckets[-1].append(p)
            size += p.numel() * p.element_size()
        for bucket in buckets:
            pending = {id(p) for p in bucket}
            done: set[int] = set()

            def hook(param, bucket=bucket, pending=pending, done=done, index=index):
                done.add(id(param))
                if done != pending:
                    return
                done.clear()
                saved = optimizer.param_groups[:]
                single = dict(saved[index])
                single["params"] = bucket
                optimizer.param_groups[:] = [single]
                try:
                    optimizer.step()
                finally:
                    optimizer.param_groups[:] = saved
                for p in bucket:
                    p.grad = None

            handles += [p.register_post_accumulate_grad_hook(hook) for p in bucket]
    return handles


def run(variant: str, fused: bool, args: Any, device: str) -> dict:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    make, spec, tiny_spec = CALIBRATION["hf-llama-1b"]
    with torch.device(device):
        model = make(tiny=args.smoke)
    spec = tiny_spec if args.smoke else spec
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=not fused)
    batch = make_inputs(parse_input_spec(spec), device=device)
    handles: list[Any] = []
    techniques: list[Any] = []
    if variant == "per-parameter":
        techniques = [memfit.OptimizerInBackward()]
    elif variant.startswith("bucket"):
        handles = bucketed_in_backward(optimizer, int(variant.split()[1]) * MiB)
    step = memfit.apply(techniques, model, optimizer, precision="bf16-mixed", device_type=device)
    if handles:  # the bucket hooks step the optimizer: the plain step must not
        step.optimizer_in_backward = True
    times = []
    for i in range(args.warmup + args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
            if i == args.warmup:
                torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        step(batch)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    row = {"variant": variant, "fused": fused, "step_s": statistics.median(times)}
    if device == "cuda":
        row["peak_allocated"] = torch.cuda.max_memory_allocated()
        row["peak_reserved"] = torch.cuda.max_memory_reserved()
    for h in handles:
        h.remove()
    with contextlib.suppress(Exception):
        memfit.undo(model)
    del step, optimizer, model, batch
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--variants", default="plain,per-parameter,bucket 64,bucket 256,bucket 1024"
    )
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "rows": [],
    }
    for fused in (True, False):
        for variant in args.variants.split(","):
            try:
                row = run(variant, fused, args, device)
            except Exception as error:
                row = {
                    "variant": variant,
                    "fused": fused,
                    "error": f"{type(error).__name__}: {error}",
                }
            result["rows"].append(row)
            print(row, flush=True)
            (out / "in_backward_probe.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
