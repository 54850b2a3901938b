"""Run 3's plans and their nearest alternatives, steps alternated on copies held side by side.

python bench/steptime_ab.py --out DIR [--rounds N] [--models a,b] [--smoke]
  ->  DIR/steptime_ab.json (written after each model)

bench/plans.py measures one configuration after another; on the host-bound models (the
Qwen2-shaped LLM, nn.TransformerEncoder) the same configuration measured twice in one run
differed by up to 10-30% (bench/results/replan_compare.md), more than the +-5 points issue 13
asks of the step-time model. Here each model's configurations are built once, all held in
memory, and stepped in rotation (one step each per round, the order rotated every round), so
that drift of the host's speed hits all alike: per configuration, the median step time (CUDA
events) and host time (the CPU's time to enqueue a step), and their spread over rounds.

Configurations: the unmodified step, Hugging Face's gradient_checkpointing_enable() (memfit's
full checkpointing of every block where a model has none), BERT-base micro-batched, and run 3's
plans
(bench/results/plans_h200_run3.json.gz) with the variants that separate one technique's cost:
a plan's checkpointing without its boundary offload, its chunked loss alone. --smoke: the
tiny models on the CPU, module names clipped to those the tiny model has.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from cost_harness import Harness, environment  # noqa: E402
from memfit.structure.blocks import find_blocks  # noqa: E402
from models import CALIBRATION_LOSS  # noqa: E402
from plans import build  # noqa: E402
from result_files import read_json  # noqa: E402

RUN3 = Path(__file__).resolve().parent / "results" / "plans_h200_run3.json.gz"
# model -> configuration label -> (run 3's row whose plan it takes, what to keep of it), or
# the techniques themselves (as Plan.to_dict writes them)
CONFIGURATIONS = {
    "qwen2-shaped": {
        "chunked loss x8": ("activations x0.75", "all"),
        "full ckpt x5, boundaries to host + chunked loss x8": ("activations x0.5", "all"),
        "full ckpt x5 + chunked loss x8": ("activations x0.5", "no offload"),
        "full ckpt x17, boundaries to host + chunked loss x8": ("activations x0.3", "all"),
        "full ckpt x17 + chunked loss x8": ("activations x0.3", "no offload"),
    },
    "transformer-encoder": {
        "full ckpt x3": ("activations x0.75", "all"),
        "full ckpt x5": ("activations x0.5", "all"),
        "full ckpt x5 + micro-batch x2": ("full checkpointing's", "all"),
        "micro-batch x2": ("full checkpointing's", "micro-batch only"),
        "full ckpt x6, boundaries to host + micro-batch x2": ("activations x0.3", "all"),
    },
    # measured 78.5 and 60.3 ms in one run (run 1): micro-batching on a step the CPU bounds
    "hf-bert-base": {
        "micro-batch x2": [{"type": "micro_batch", "n": 2}],
        "micro-batch x4": [{"type": "micro_batch", "n": 4}],
    },
    "hf-llama-1b": {
        "chunked loss x4": ("activations x0.75", "chunked loss only"),
        "lean x8 + chunked loss x4": ("activations x0.75", "all"),
        "lean x12 + chunked loss x4": ("activations x0.5", "all"),
    },
}


def techniques_for(row: dict, keep: str, model: torch.nn.Module) -> list:
    """The plan of a run-3 row, reduced as ``keep`` says, its module names clipped to the
    model's (the tiny models of --smoke have fewer layers)."""
    kept = []
    names = {name for name, _ in model.named_modules()}
    for technique in row["plan"]["techniques"]:
        kind = technique["type"]
        if keep == "no offload" and kind == "offload_activations":
            continue
        if keep == "micro-batch only" and kind != "micro_batch":
            continue
        if keep == "chunked loss only" and kind != "chunked_loss":
            continue
        if "modules" in technique:
            modules = [m for m in technique["modules"] if m in names]
            if not modules:
                continue
            technique = {**technique, "modules": modules}
        kept.append(technique)
    return list(memfit.Plan.from_dict({"techniques": kept}).techniques)


def prepare(name: str, label: str, device: str, tiny: bool, rows: dict):
    """A model, its batch and its applied step for one configuration."""
    model, batch = build(name, device, tiny)
    techniques: list = []
    if label == "hf full checkpointing" and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif label == "hf full checkpointing":
        techniques = [memfit.Checkpoint(modules=tuple(find_blocks(model)))]
    elif isinstance(CONFIGURATIONS[name].get(label), list):
        techniques = list(
            memfit.Plan.from_dict({"techniques": CONFIGURATIONS[name][label]}).techniques
        )
    elif label != "unmodified":
        source, keep = CONFIGURATIONS[name][label]
        techniques = techniques_for(rows[f"{name} | {source}"], keep, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device == "cuda")
    loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
    step = memfit.apply(
        techniques, model, optimizer, loss_fn=loss_fn, forward=forward,
        precision="bf16-mixed", device_type=device,
    )  # fmt: skip
    return step, batch


def rotated(harness: Harness, steps: dict, rounds: int, warmup: int) -> dict:
    """Every configuration stepped once per round, the order rotated each round."""
    labels = list(steps)
    times: dict = {label: {"step_s": [], "host_s": []} for label in labels}
    for r in range(warmup + rounds):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            step, batch = steps[label]
            harness.sync()
            started = time.perf_counter()
            if harness.cuda:
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
            step(batch)
            enqueued = time.perf_counter() - started
            if harness.cuda:
                end.record()
                end.synchronize()
                seconds = start.elapsed_time(end) / 1e3
            else:
                seconds = time.perf_counter() - started
            if r >= warmup:
                times[label]["step_s"].append(seconds)
                times[label]["host_s"].append(enqueued)
    found = {}
    for label, t in times.items():
        median = statistics.median(t["step_s"])
        found[label] = {
            "step_s": median,
            "host_s": statistics.median(t["host_s"]),
            "step_s_all": t["step_s"],
            "spread": (max(t["step_s"]) - min(t["step_s"])) / median,
        }
    base = found.get("unmodified", {}).get("step_s")
    for row in found.values():
        row["overhead"] = row["step_s"] / base - 1 if base else None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--models", default=",".join(CONFIGURATIONS))
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args()
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    harness = Harness(device)
    rows = read_json(RUN3)["rows"]
    rounds, warmup = (2, 1) if args.smoke else (args.rounds, 2)
    result: dict = {"environment": environment(), "smoke": args.smoke, "rows": {}, "errors": {}}
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        # LLaMA-1B: four copies of 20 GB of model state fit an H200; its checkpointing is not
        # in question (+23% measured, +25% predicted)
        anchors = ["unmodified"] + (["hf full checkpointing"] if name != "hf-llama-1b" else [])
        labels = [*anchors, *CONFIGURATIONS[name]]
        steps = {}
        for label in labels:
            try:
                steps[label] = prepare(name, label, device, args.smoke, rows)
            except Exception:  # recorded; the other configurations are still measured
                result["errors"][f"{name} | {label}"] = traceback.format_exc()[-2000:]
        try:
            result["rows"][name] = rotated(harness, steps, rounds, warmup)
        except Exception:
            result["errors"][name] = traceback.format_exc()[-2000:]
        del steps
        harness.clean()
        result["total_s"] = time.perf_counter() - started
        (args.out / "steptime_ab.json").write_text(json.dumps(result, indent=1))
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        for label, row in result["rows"].get(name, {}).items():
            print(f"  {label:55s} {row['step_s'] * 1e3:8.1f} ms  host {row['host_s'] * 1e3:8.1f}"
                  f"  {row['overhead'] or 0:+7.1%}  spread {row['spread']:.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
