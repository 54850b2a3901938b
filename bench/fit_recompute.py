"""Checkpointing's host constants fitted again over the per-phase host constants, and every plan
the H200 measured re-predicted with them (CPU: traces against committed measurements).

python bench/fit_recompute.py --phases FILE --cache C[,C] --out DIR   ->  DIR/fit_recompute.json

bench/fit_host_phases.py measured what a step's forward, backward and optimizer take on the CPU
apart (bench/results/fit_host_phases_h200.json): an operator of forward half of what the
defaults charge, the optimizer's Python a tenth. Checkpointing's host constants (per
recomputed operator, per region, per operator a region saves) were fitted over the old ones,
so with the new ones they are fitted again: on plans run 1's configurations of the four
training models (GPT-2, LLaMA-1B, BERT-base, ResNet-50), by least squares on the predicted
minus measured overhead over the same run's unmodified step (points; the host time measured
in a step the GPU bounds includes waiting on a full launch queue, so it is not a target). Held
out: run 1's other models and runs 2, 3, 5 and 9 (bench/results/plans_h200*.json). Four sets
of constants are compared: *before* (the defaults), *phases* (the per-phase constants,
checkpointing's as they were) and *after* (the per-phase constants and checkpointing's
re-fitted); and *optimizer*: the defaults with only the optimizer phase's two constants of
the per-phase fit (its measured 0.55-2.45 ms a step against the 5.66 ms the defaults charge).
Traces come from bench/replan_trace.py's caches (one per --models split is fine).
Re-predictions, not measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.cost import Calibration  # noqa: E402
from replan_compare import TRAIN_MODELS, _base_of, choices, overheads, predict  # noqa: E402
from replan_trace import RESULTS, measured_configurations, trace_key  # noqa: E402

RUNS = ("plans_h200.json.gz", "plans_h200_run2.json.gz", "plans_h200_run3.json.gz",
        "plans_h200_run5.json.gz", "plans_h200_run9.json.gz")  # fmt: skip
FITTED = ("recompute_op_s", "checkpoint_region_s", "checkpoint_op_s")
KEYS = ("before", "optimizer", "phases", "after")
OPTIMIZER = ("optimizer_step_s", "host_tensor_s")  # the optimizer phase's constants alone


def load(caches: list[Path]) -> list[dict]:
    traces: dict = {}
    for cache in caches:
        traces.update(pickle.loads(cache.read_bytes()))
    configs = []
    for run in RUNS:
        for config in measured_configurations(RESULTS / run):
            traced = traces.get(trace_key(config), {})
            config["trace"] = traced.get("ops")
            train = run == RUNS[0] and config["model"] in TRAIN_MODELS
            config["set"] = (
                "train" if train and not config["label"].startswith("A/B") else (f"held out: {run}")
            )
            configs.append(config)
    return configs


def fit(configs: list[dict], start: Calibration) -> Calibration:
    """FITTED by least squares on the training set's overhead errors (points)."""
    from scipy.optimize import minimize

    train = [c for c in configs if c["set"] == "train" and c["trace"] is not None]
    pairs = [(c, _base_of(c, configs)) for c in train if c["plan"] != "unmodified"]
    pairs = [(c, b) for c, b in pairs if b is not None and b["trace"] is not None]

    def calibration(values: np.ndarray) -> Calibration:
        return dataclasses.replace(start, **dict(zip(FITTED, np.exp(values).tolist(), strict=True)))

    def loss(values: np.ndarray) -> float:
        c = calibration(values)
        errors = [
            (predict(p["trace"], c) / predict(b["trace"], c))
            - (p["measured"]["step_s"] / b["measured"]["step_s"])
            for p, b in pairs
        ]
        return float(np.mean(np.square(errors)))

    x0 = np.log([max(1e-7, getattr(start, f)) for f in FITTED])
    found = minimize(loss, x0, method="Powell", options={"maxiter": 20000, "xtol": 1e-3})
    return calibration(found.x)


def tally(configs: list[dict], picks: dict, which: str) -> dict:
    def member(row: dict) -> bool:
        return (
            which == "all"
            or row["set"] == which
            or (which == "held out" and row["set"].startswith("held out"))
        )

    found = {}
    for key in KEYS:
        errors = [abs(c[f"{key}_error_points"]) for c in configs
                  if member(c) and f"{key}_error_points" in c]  # fmt: skip
        chosen = [p for p in picks[key] if member(p)]
        found[key] = {
            "plans": len(errors),
            "within_5_points": int(sum(e <= 5 for e in errors)),
            "median_error_points": float(np.median(errors)) if errors else None,
            "budgets": len(chosen),
            "fastest_chosen": int(sum(p["within_5_percent"] for p in chosen)),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", required=True, type=Path)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    configs = load([Path(p) for p in args.cache.split(",")])
    phased = dataclasses.replace(
        Calibration(), **json.loads(args.phases.read_text())["at_reference"]
    )
    calibrations = {
        "before": Calibration(),
        "optimizer": dataclasses.replace(
            Calibration(), **{f: getattr(phased, f) for f in OPTIMIZER}
        ),
        "phases": phased,
    }
    calibrations["after"] = fit(configs, phased)
    picks = {}
    for key, c in calibrations.items():
        overheads(configs, c, key)
        picks[key] = choices(configs, key)
    sets = ["train", *(f"held out: {r}" for r in RUNS), "held out", "all"]
    result = {
        "constants": {
            key: {f: getattr(c, f) for f in (*FITTED, *phased_fields(args.phases))}
            for key, c in calibrations.items()
        },
        "summary": {which: tally(configs, picks, which) for which in sets},
        "untraced": [trace_key(c)[:120] for c in configs if c["trace"] is None],
        "rows": [
            {
                k: c.get(k)
                for k in (
                    "run",
                    "model",
                    "label",
                    "plan",
                    "set",
                    "measured_overhead",
                    *(f"{key}_overhead" for key in KEYS),
                    *(f"{key}_error_points" for key in KEYS),
                )
            }
            for c in configs
            if "measured_overhead" in c
        ],  # fmt: skip
        "choices": picks,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fit_recompute.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["constants"], indent=1))
    for which in sets:
        print(which, json.dumps(result["summary"][which]))


def phased_fields(path: Path) -> tuple[str, ...]:
    return tuple(json.loads(path.read_text())["at_reference"])


if __name__ == "__main__":
    main()
