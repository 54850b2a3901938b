"""FSDP2 on 2 GPUs: measured per-rank peak allocated/reserved and step time vs memfit's prediction.

torchrun --nproc-per-node 2 bench/fsdp2.py --out DIR   ->  DIR/fsdp2.json   (2-GPU machine)
torchrun --nproc-per-node 2 bench/fsdp2.py --out DIR --models llama-1b  ->  DIR/fsdp2_llama-1b.json
torchrun --nproc-per-node 2 bench/fsdp2.py --out DIR --smoke   (CPU, gloo: the same code paths)

Models: memfit's LLaMA-1B (zoo ``llama-1b``) and Llama-3.2-3B's shape, bf16-mixed, AdamW
(torch's default multi-tensor step; memfit's plan may make it fused), batch 8 x 2048 per rank
(1B) and 4 x 2048 (3B). The budget per rank is half of what one GPU needs for the unmodified
step (predicted), so one GPU does not fit without techniques. Rows, each applied with
``memfit.apply`` in the same two processes:

* ``fsdp2-defaults``: ``fully_shard`` on every block, then the root (FSDP2's defaults);
* ``fsdp2+full-checkpointing``: the same with every block checkpointed;
* ``memfit-plan``: ``memfit.plan(..., gpus=2, budget=...)``.

Each row: the prediction (``memfit.estimate(..., plan=...)``; the plan's own for the plan),
made before the process group exists, on every rank (the fake process group cannot share a
process with a real one); then 2 warm-up steps and 3 measured ones: each rank's
``max_memory_allocated``/``max_memory_reserved`` over the measured steps and the median step
time. Rank 0 writes the JSON, one entry per row with both ranks' figures.

Written on 2026-12-04 and not run on GPUs yet (the 2-GPU machine was not lent that session).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.devices import get_device  # noqa: E402
from memfit.errors import MemfitError  # noqa: E402
from memfit.techniques import Checkpoint, Sharding  # noqa: E402
from memfit.zoo.llama import Llama, LlamaConfig  # noqa: E402

LLAMA_3B = LlamaConfig(  # Llama-3.2-3B's shape
    vocab_size=128256,
    max_seq_len=2048,
    dim=3072,
    n_layers=28,
    n_heads=24,
    n_kv_heads=8,
    hidden_dim=8192,
)
TINY = LlamaConfig(
    vocab_size=128, max_seq_len=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=96
)
GPUS = 2
UNITS = ("layers.*",)
OPTIMIZER = "adamw"  # torch's CUDA default (foreach); the plan may make it fused


def models(smoke: bool) -> list[tuple[str, LlamaConfig, int, int]]:
    """(name, config, batch per rank, sequence length)."""
    if smoke:
        return [("tiny-llama", TINY, 2, 64)]
    return [("llama-1b", LlamaConfig(), 8, 2048), ("llama-3b", LLAMA_3B, 4, 2048)]


def rows(config: LlamaConfig, batch: str, device: str, budget: int) -> tuple[dict, Any]:
    """Each row's techniques, and the plan (made here: before any process group exists)."""
    ranks = Sharding(gpus=GPUS, units=UNITS)
    full = Checkpoint(modules=UNITS)
    plan = memfit.plan(
        lambda: Llama(config),
        batch,
        budget=budget,
        device=device,
        gpus=GPUS,
        optimizer=OPTIMIZER,
        max_traces=3,
    )
    techniques = {
        "fsdp2-defaults": [ranks],
        "fsdp2+full-checkpointing": [full, ranks],
        "memfit-plan": list(plan.techniques),
    }
    return techniques, plan


def predict(config: LlamaConfig, batch: str, device: str, techniques: list[Any]) -> dict:
    profile = memfit.estimate(
        lambda: Llama(config), batch, device=device, plan=techniques, optimizer=OPTIMIZER
    )
    return _predicted(profile)


def _predicted(profile: Any) -> dict:
    return {
        "peak_allocated": profile.peak_allocated,
        "peak_reserved": profile.peak_reserved,
        "step_time_s": profile.step_time_s,
        "plan": profile.plan,
    }


def measure(config: LlamaConfig, techniques: list[Any], shape: tuple[int, int], smoke: bool):
    rank = dist.get_rank()
    on_gpu = torch.cuda.is_available() and not smoke
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    torch.manual_seed(0)
    with torch.device(device):
        model = Llama(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    step = memfit.apply(techniques, model, optimizer, precision="bf16-mixed")
    generator = torch.Generator(device=device).manual_seed(rank)
    ids = torch.randint(0, config.vocab_size, shape, device=device, generator=generator)
    batch = {"input_ids": ids, "labels": ids}
    times = []
    for i in range(5):
        if i == 2 and on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        step(batch)
        if on_gpu:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - started)
    result = {"step_time_s": statistics.median(times), "device": str(device)}
    if on_gpu:
        result["peak_allocated"] = torch.cuda.max_memory_allocated()
        result["peak_reserved"] = torch.cuda.max_memory_reserved()
    del step, model, optimizer
    if on_gpu:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny model, CPU, gloo")
    parser.add_argument("--device", default="h200", help="the GPU predicted for")
    parser.add_argument(
        "--models", help="comma-separated subset: llama-1b,llama-3b (in the JSON's name)"
    )
    args = parser.parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    total = get_device(args.device).memory_bytes
    prepared = []
    chosen_models = [m for m in models(smoke) if not args.models or m[0] in args.models.split(",")]
    for name, config, per_rank, seq in chosen_models:  # predictions first: no process group yet
        ids = f"int64[{per_rank},{seq}]<{config.vocab_size}"
        batch = f"input_ids={ids} labels={ids}"
        one_gpu = memfit.estimate(
            lambda c=config: Llama(c), batch, device=args.device, optimizer=OPTIMIZER
        )
        # half of one GPU's need; the smoke's tiny step is mostly cuBLAS's workspace (and FSDP2's
        # stream pools add to it): twice that, so that its plan exists
        budget = min(total, one_gpu.peak_reserved * 2 if smoke else one_gpu.peak_reserved // 2)
        entry: dict[str, Any] = {"model": name, "batch": batch, "budget": budget, "rows": {}}
        entry["one_gpu_predicted_reserved"] = one_gpu.peak_reserved
        plan = None
        try:
            techniques, plan = rows(config, batch, args.device, budget)
        except MemfitError as error:
            techniques = {"fsdp2-defaults": [Sharding(gpus=GPUS, units=UNITS)]}
            entry["plan_error"] = str(error)
        for row, chosen in techniques.items():
            if row == "memfit-plan" and plan is not None and plan.profile is not None:
                predicted = _predicted(plan.profile)  # the plan's own prediction: no re-trace
            else:
                predicted = predict(config, batch, args.device, chosen)
            entry["rows"][row] = {
                "techniques": [type(t).__name__ + str(asdict(t)) for t in chosen],
                "predicted": predicted,
            }
        prepared.append((entry, config, (per_rank, seq), techniques))
    backend = "gloo" if smoke else "nccl"
    if not smoke:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    rank = dist.get_rank()
    for entry, config, shape, techniques in prepared:
        for row, chosen in techniques.items():
            try:
                mine: dict[str, Any] = measure(config, chosen, shape, smoke)
            except Exception as error:  # one row failing leaves the others measured
                failure = f"{type(error).__name__}: {error}"
                mine = {"error": failure, "trace": traceback.format_exc()}
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, mine)
            entry["rows"][row]["measured_per_rank"] = everyone
            if rank == 0:
                print(entry["model"], row, json.dumps(entry["rows"][row]["predicted"]), everyone[0])
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        result = {
            "gpus": GPUS,
            "smoke": smoke,
            "torch": torch.__version__,
            "device_predicted": args.device,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "entries": [entry for entry, *_ in prepared],
        }
        suffix = "_" + args.models.replace(",", "_") if args.models else ""
        path = args.out / f"fsdp2{suffix}.json"
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
