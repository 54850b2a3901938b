"""Checkpointing's Python in forward: per region and per operator, fitted on the diag runs.

python bench/fit_regions.py [--cache C] [--plans-cache P] [--out DIR]
  ->  DIR/fit_regions.json and .md (default bench/results)

The step-time model charged each checkpointed region's forward one constant (0.88 ms, fitted
by bench/replan_compare.py on whole blocks only), so LLaMA-1B's 32 checkpointed norms (lean
blocks) were priced +11% where they measured +0.1%. Non-reentrant checkpointing runs Python per
region and per tensor the region saves (its pack hook), so its cost grows with the region: here
``checkpoint_region_s`` (per region) and ``checkpoint_op_s`` (per operator the region runs in
forward, ``memfit.step.overhead.scope``) are fitted on the two runs of bench/diag_techniques.py
(bench/results/diag_techniques_h200.json, diag_lean_h200.json: GPT-2, GPT-2 medium and LLaMA-1B
with their norms, their whole blocks or the lean techniques checkpointed; H200): their 13
checkpointed configurations, without selective checkpointing (its own constant) or the chunked
loss (those runs had an earlier implementation), by grid search on the squared error of the
overhead over each run's unmodified step. Each configuration is traced on this CPU (cached in
``--cache``); the other constants stay as committed. The fitted pair is then checked on every
configuration bench/plans.py measured (its three runs, 63 configurations traced by
bench/replan_trace.py into ``--plans-cache``), none of which it was fitted on. Predictions of
measured configurations, not measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diag_techniques import plans  # noqa: E402
from fit_costs import H200, _arrays, noted  # noqa: E402 (installs the note recorder)
from memfit.cost import Calibration  # noqa: E402
from memfit.trace.estimate import trace_step  # noqa: E402
from plans import MODELS, _settings, spec_of  # noqa: E402
from replan_compare import load, overheads, predict  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DIAG_RUNS = ("diag_techniques_h200.json", "diag_lean_h200.json")
OLD = {"checkpoint_region_s": 0.88e-3, "checkpoint_op_s": 0.0}
REGION_GRID = (0.0, 0.05e-3, 0.1e-3, 0.15e-3, 0.2e-3, 0.3e-3, 0.4e-3, 0.5e-3, 0.6e-3, 0.88e-3)
OP_GRID = (0.0, 2.5e-6, 5e-6, 7.5e-6, 10e-6, 12.5e-6, 15e-6, 20e-6, 25e-6)
WITHIN = 5.0  # points


def diag_rows() -> list[dict]:
    """The diag runs' configurations: run, model, label, measured step time."""
    rows = []
    for run in DIAG_RUNS:
        for row in json.loads((RESULTS / run).read_text())["rows"]:
            if "previous" not in row["plan"]:
                rows.append({"run": run, "model": row["model"], "label": row["plan"],
                             "step_s": row["measured"]["step_s"]})  # fmt: skip
    return rows


def trace_all(rows: list[dict], cache: Path) -> dict:
    """Each distinct (model, label) traced once for an H200; its operators' arrays."""
    done = pickle.loads(cache.read_bytes()) if cache.is_file() else {}
    for row in rows:
        key = f"{row['model']} | {row['label']}"
        if key in done:
            continue
        name = row["model"]
        noted.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = trace_step(
                lambda name=name: MODELS[name][0](False),
                spec_of(name, False),
                plan=plans(name)[row["label"]],
                **{**_settings(name), "device": H200},
                timeout_s=600,
            )
        ops = _arrays(traced.record, noted[1:])
        steady = "optimizer1" in traced.record.marks
        ops["recompute"] = np.array(
            [op.recompute for op in traced.record.ops if not (steady and op.stage == "optimizer0")]
        )
        done[key] = ops
        cache.write_bytes(pickle.dumps(done))
        print(f"traced {key}", flush=True)
    return done


def errors(rows: list[dict], traces: dict, c: Calibration) -> list[dict]:
    """Predicted against measured overhead over each run's unmodified step, in points."""
    found = []
    for row in rows:
        if row["label"] == "unmodified":
            continue
        base = next(
            r for r in rows
            if r["run"] == row["run"] and r["model"] == row["model"] and r["label"] == "unmodified"
        )  # fmt: skip
        predicted = predict(traces[f"{row['model']} | {row['label']}"], c)
        predicted_base = predict(traces[f"{row['model']} | unmodified"], c)
        measured = row["step_s"] / base["step_s"] - 1
        overhead = predicted / predicted_base - 1
        found.append({**row, "measured_overhead": measured, "predicted_overhead": overhead,
                      "error_points": 100 * (overhead - measured)})  # fmt: skip
    return found


def fitted_on(row: dict) -> bool:
    return "chunked" not in row["label"] and "selective" not in row["label"]


def counts(points: list[float]) -> dict:
    a = np.abs(np.array(points))
    return {"configurations": len(a), "within_5_points": int((a <= WITHIN).sum()),
            "median_error_points": float(np.median(a)) if len(a) else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memfit_diag.pkl"))
    parser.add_argument("--plans-cache", type=Path, default=Path("/tmp/memfit_replan.pkl"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = diag_rows()
    traces = trace_all(rows, args.cache)
    fit_rows = [r for r in rows if fitted_on(r) or r["label"] == "unmodified"]

    def score(c: Calibration) -> float:
        return float(np.mean([e["error_points"] ** 2 for e in errors(fit_rows, traces, c)]))

    grid = [(score(dataclasses.replace(Calibration(), checkpoint_region_s=r, checkpoint_op_s=o)),
             r, o) for r in REGION_GRID for o in OP_GRID]  # fmt: skip
    _, region, op = min(grid)
    new = {"checkpoint_region_s": region, "checkpoint_op_s": op}
    result: dict = {
        "what": "re-predictions on a CPU of configurations measured on an H200; not measurements",
        "old": OLD,
        "fitted": new,
        "fitted_on": [
            f"{r['run']}: {r['model']} | {r['label']}"
            for r in fit_rows
            if r["label"] != "unmodified"
        ],
    }
    for key, constants in (("old", OLD), ("fitted", new)):
        c = dataclasses.replace(Calibration(), **constants)
        diag = errors(rows, traces, c)
        result[f"diag_{key}"] = diag
        result[f"summary_{key}"] = {
            "diag, fitted on": counts([e["error_points"] for e in diag if fitted_on(e)]),
            "diag, the rest": counts([e["error_points"] for e in diag if not fitted_on(e)]),
        }
    if args.plans_cache.is_file():
        configs = load(args.plans_cache)
        for key, constants in (("old", OLD), ("fitted", new)):
            overheads(configs, dataclasses.replace(Calibration(), **constants), key)
            points = [c[f"{key}_error_points"] for c in configs if f"{key}_error_points" in c]
            result[f"summary_{key}"]["plan runs (held out)"] = counts(points)
        result["plan_runs"] = [
            {"plan": c.get("short") or c["plan"]}
            | {k: c.get(k) for k in ("run", "model", "measured_overhead",
                                     "old_error_points", "fitted_error_points")}
            for c in configs if "old_error_points" in c
        ]  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fit_regions.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "fit_regions.md").write_text(markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("fitted", "summary"))}))


def markdown(result: dict) -> str:
    old, new = result["old"], result["fitted"]
    per = "{:.2f} ms / {:.1f} us"
    lines = [
        "# Checkpointing's Python per region and per operator (bench/fit_regions.py)\n",
        f"Re-predictions on a CPU of configurations measured on an H200, not measurements. "
        f"Constants per region / per operator in forward: old "
        f"{per.format(old['checkpoint_region_s'] * 1e3, old['checkpoint_op_s'] * 1e6)}, fitted "
        f"{per.format(new['checkpoint_region_s'] * 1e3, new['checkpoint_op_s'] * 1e6)}.\n",
        "| set | configurations | within ±5 points, old -> fitted | median error (points) |",
        "|---|---:|---:|---:|",
    ]
    for name, before in result["summary_old"].items():
        after = result["summary_fitted"][name]
        lines.append(
            f"| {name} | {before['configurations']} | {before['within_5_points']} -> "
            f"{after['within_5_points']} | {before['median_error_points']:.1f} -> "
            f"{after['median_error_points']:.1f} |"
        )
    lines += ["", "| run | model | configuration | measured | error old | error fitted |",
              "|---|---|---|---:|---:|---:|"]  # fmt: skip
    for before, after in zip(result["diag_old"], result["diag_fitted"], strict=True):
        lines.append(
            f"| {before['run']} | {before['model']} | {before['label']} | "
            f"{100 * before['measured_overhead']:+.1f}% | {before['error_points']:+.1f} | "
            f"{after['error_points']:+.1f} |"
        )
    for row in result.get("plan_runs", []):
        lines.append(
            f"| {row['run']} | {row['model']} | {row['plan'][:70]} | "
            f"{100 * row['measured_overhead']:+.1f}% | {row['old_error_points']:+.1f} | "
            f"{row['fitted_error_points']:+.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
