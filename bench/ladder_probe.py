"""Checkpointing, offloaded boundaries and micro-batching added one step at a time, measured
beside memfit's prediction, on the models whose plans are predicted worst.

python bench/ladder_probe.py --out DIR [--models transformer-encoder,tv-resnet50] [--smoke]
  ->  DIR/ladder_probe.json, written after each row

Plans run 5 (H200) missed by 11-18 points on two classes: the 6-layer nn.TransformerEncoder,
whose steps the CPU bounds (three and five checkpointed blocks measured +30% / +53%, predicted
+42% / +70%; all six, Hugging Face's stand-in, +123%), and ResNet-50's plans, which checkpoint
blocks and offload their boundaries (measured +29% / +43%, predicted +18% / +25%). One plan per
rung, each on a fresh model (bench/plans.py's ``measure``): the first k blocks checkpointed, the
same with their boundaries offloaded to host memory, micro-batching alone and on top; per row the
measured step and host (enqueue) times and peak reserved memory, the predicted step time and
peak. Separating the rungs separates the causes: the per-block price of recomputation on a
CPU-bound step, and the transfers' overlap on a GPU-bound one.
"""

from __future__ import annotations

import argparse
import json
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
from plans import MODELS, _settings, build, measure, spec_of  # noqa: E402

RUNGS = {"transformer-encoder": (1, 2, 3, 4, 5, 6), "tv-resnet50": (3, 5, 8, 16)}
MICRO_BATCHED = ("transformer-encoder",)  # ResNet-50's BatchNorm: its plans never micro-batch


def ladder(blocks: list[str], rungs: tuple[int, ...], micro: bool) -> dict[str, list]:
    """The plans of one model, by label: each rung alone, then with micro-batching."""
    plans: dict[str, list] = {"unmodified": []}
    for k in rungs:
        checkpointed = tuple(blocks[:k])
        plans[f"full ckpt x{k}"] = [memfit.Checkpoint(modules=checkpointed)]
        plans[f"full ckpt x{k}, boundaries to host"] = [
            memfit.Checkpoint(modules=checkpointed),
            memfit.OffloadActivations(modules=checkpointed),
        ]
    if not micro:
        return plans
    every = f"full ckpt x{len(blocks)}"
    plans["micro-batch x2"] = [memfit.MicroBatch(2)]
    for label in (every, f"{every}, boundaries to host"):
        if label in plans:
            plans[f"{label} + micro-batch x2"] = [*plans[label], memfit.MicroBatch(2)]
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(RUNGS))
    parser.add_argument("--smoke", action="store_true", help="tiny models (on a CPU: a test)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    harness = Harness(device, warmup=1 if args.smoke else 2, steps=1 if args.smoke else 6)
    result: dict = {
        "environment": environment(),
        "planned_for": _settings("tv-resnet50")["device"],
        "smoke": args.smoke,
        "rows": [],
    }
    for name in args.models.split(","):
        model, _ = build(name, "meta", args.smoke)
        blocks = find_blocks(model)
        rungs = tuple(k for k in RUNGS[name] if k <= len(blocks))
        for label, techniques in ladder(blocks, rungs, name in MICRO_BATCHED).items():
            row: dict = {
                "model": name,
                "plan": label,
                "techniques": memfit.Plan(techniques=tuple(techniques)).to_dict()["techniques"],
            }
            started = time.perf_counter()
            try:
                predicted = memfit.estimate(
                    lambda name=name: MODELS[name][0](args.smoke),
                    spec_of(name, args.smoke),
                    plan=techniques or None,
                    **_settings(name),
                )
                row["predicted"] = {
                    "step_s": predicted.step_time_s,
                    "peak_reserved": predicted.peak_reserved,
                }
                row["measured"] = measure(harness, name, techniques)
            except Exception:  # recorded and shown: the other rows still run
                row["error"] = traceback.format_exc()[-2000:]
            row["wall_s"] = round(time.perf_counter() - started, 1)
            result["rows"].append(row)
            print(_line(row), flush=True)
            (out / "ladder_probe.json").write_text(json.dumps(result, indent=1))


def _line(row: dict) -> str:
    """One row as the log shows it: measured and predicted step time and reserved peak."""
    if "error" in row:
        return f"{row['model']} | {row['plan']}: ERROR {row['error'][-300:]}"
    m, p = row["measured"], row["predicted"]
    return (
        f"{row['model']} | {row['plan']}: {m['step_s'] * 1e3:.1f} ms (host {m['host_s'] * 1e3:.1f})"
        f" {m['peak_reserved'] / 2**30:.2f} GiB; predicted {(p['step_s'] or 0) * 1e3:.1f} ms "
        f"{p['peak_reserved'] / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
