"""Candidate changes to the step-time model's host side, each re-fitted on the training set and
judged on the held-out sets: re-predictions on this CPU of the H200 plan runs, not measurements.

python bench/steptime_variants.py [--cache C] [--out DIR]  ->  DIR/steptime_variants.md/.json

Uses bench/replan_compare.py's configurations, sets and pricing (bench/replan_trace.py's
cache). Each variant changes one class of host cost and re-fits its free constants on the
training set only (run 1's GPT-2, LLaMA-1B, BERT-base, ResNet-50), as replan_compare's fit:

* landed: the constants memfit ships (no re-fit).
* optimizer per tensor: torch.optim's Python priced per tensor the optimizer step takes
  (``host_tensor_s``) instead of once per step (``optimizer_step_s``): the encoder and
  Mistral step 72-75 parameter tensors, the Qwen2-shaped model 290, the training models 147-202.
* region per recomputed op: checkpointing's Python priced per operator it recomputes, none per
  region in forward (``checkpoint_region_s`` = 0): lean plans checkpoint small regions (norms).
* region at its recomputation: each region's Python charged where its recomputation starts in
  backward instead of at its entry in forward.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import replan_compare as rc  # noqa: E402
from memfit.cost import Calibration  # noqa: E402

SHOWN = ("forward_backward_s", "checkpoint_region_s", "recompute_op_s", "optimizer_step_s",
         "host_tensor_s")  # fmt: skip


def regions_at_recomputation(trace: dict) -> dict:
    """The trace with each checkpointed region's note moved to the first operator of a run of
    recomputed operators (one region's recomputation), the total kept."""
    trace = dict(trace)
    recompute = trace.get("recompute", np.zeros(len(trace["kind"]), dtype=bool))
    noted = trace["noted_checkpoint_region"]
    starts = np.flatnonzero(recompute & ~np.r_[False, recompute[:-1]])
    if len(starts) and noted.sum():
        moved = np.zeros_like(noted)
        moved[starts] = noted.sum() / len(starts)
        trace["noted_checkpoint_region"] = moved
    return trace


def variants(configs: list[dict]) -> list[tuple[str, Calibration, list[dict]]]:
    landed = Calibration()
    found = [("landed", landed, configs)]
    per_tensor = dataclasses.replace(landed, optimizer_step_s=0.0, host_tensor_s=5.66e-3 / 900)
    fitted = ("forward_backward_s", "checkpoint_region_s", "recompute_op_s", "host_tensor_s")
    found.append(("optimizer per tensor", _fit(configs, per_tensor, fitted), configs))
    per_op = dataclasses.replace(landed, checkpoint_region_s=0.0)
    fitted = ("forward_backward_s", "recompute_op_s", "optimizer_step_s")
    found.append(("region per recomputed op", _fit(configs, per_op, fitted), configs))
    moved = [
        {**c, "trace": regions_at_recomputation(c["trace"]) if c["trace"] is not None else None}
        for c in configs
    ]
    fitted = ("forward_backward_s", "checkpoint_region_s", "recompute_op_s")
    found.append(("region at its recomputation", _fit(moved, landed, fitted), moved))
    return found


def _fit(configs: list[dict], start: Calibration, fitted: tuple[str, ...]) -> Calibration:
    saved, rc.FITTED = rc.FITTED, fitted
    try:
        return rc.fit(configs, start)
    finally:
        rc.FITTED = saved


def scores(configs: list[dict], c: Calibration) -> dict:
    rc.overheads(configs, c, "v")
    picks = rc.choices(configs, "v")
    found = {}
    for which in rc.SETS:
        errors = [abs(x["v_error_points"]) for x in configs
                  if "v_error_points" in x and rc._in(x, which)]  # fmt: skip
        chosen = [p for p in picks if rc._in(p, which)]
        found[which] = {"plans": len(errors), "within_5_points": int(sum(e <= 5 for e in errors)),
                        "median_error_points": float(np.median(errors)),
                        "fastest_chosen": int(sum(p["within_5_percent"] for p in chosen)),
                        "budgets": len(chosen)}  # fmt: skip
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memfit_replan.pkl"))
    parser.add_argument("--out", type=Path, default=rc.RESULTS)
    args = parser.parse_args()
    configs = rc.load(args.cache)
    rows = []
    for name, c, priced in variants(configs):
        rows.append({"variant": name, "constants": {f: getattr(c, f) for f in SHOWN},
                     "sets": scores(priced, c)})  # fmt: skip
    lines = ["# Candidate host-cost classes, re-fitted on the training set (bench/"
             "steptime_variants.py)", "", "Re-predictions on a CPU of the three H200 plan runs; "
             "within ±5 points / median error in points / budgets where the configuration "
             "predicted fastest was measured within 5% of the fastest.", "",
             "| variant | constants | " + " | ".join(rc.SETS) + " |",
             "|---|---|" + "---:|" * len(rc.SETS)]  # fmt: skip
    for row in rows:
        constants = ", ".join(f"{k} {v * 1e6:.1f} µs" for k, v in row["constants"].items())
        cells = [f"{s['within_5_points']}/{s['plans']}, {s['median_error_points']:.1f}, "
                 f"{s['fastest_chosen']}/{s['budgets']}" for s in row["sets"].values()]  # fmt: skip
        lines.append(f"| {row['variant']} | {constants} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "steptime_variants.json").write_text(json.dumps(rows, indent=1))
    (args.out / "steptime_variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
