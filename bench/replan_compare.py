"""Predicted against measured overhead of every plan bench/plans.py measured, before and after a
re-fit of the step-time model's host terms: re-predictions on this CPU, not measurements.

python bench/replan_compare.py [--cache C] [--out DIR]     ->  DIR/replan_compare.json and .md

Reads bench/replan_trace.py's cache (every configuration measured on the H200, traced here)
and the measurements (bench/results/plans_h200.json.gz, plans_h200_run2.json.gz,
plans_h200_run3.json.gz). Fits, on run 1's configurations of the models the step-time model was
calibrated on (GPT-2, LLaMA-1B, BERT-base, ResNet-50: the *training set*), the constants of
what eager PyTorch's host side does per step, micro-batch, operator, recomputed operator and
checkpointed region (``FITTED``), by least squares on the log of predicted over measured step
time and host time (``fit``); everything else (the held-out models of run 1: the Qwen2- and
Mistral-shaped LLMs, nn.TransformerEncoder, GPT-2 medium; and all of runs 2 and 3) is the
*held-out set*. Run 3's plans with boundaries to host are priced by their operators alone (the
offload's PCIe time is not re-priced: the tracer found the GPU the busiest of GPU, host and
PCIe for all of them: ``repricing_check``). For each configuration: the overhead over its
run's unmodified step, measured and predicted with the constants before and after. Then, per
budget, the configurations measured for that model in that run whose measured reserved peak
fits it: is the one the model predicts fastest the one measured fastest
(within 5%)? That is the choice the planner makes among them.
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

from fit_costs import KINDS, NOTED, device_times, overlapped  # noqa: E402
from memfit.cost import Calibration  # noqa: E402
from replan_trace import RESULTS, RUNS, measured_configurations, trace_key  # noqa: E402

TRAIN_MODELS = ("hf-gpt2", "hf-llama-1b", "hf-bert-base", "tv-resnet50")
TRAIN_RUN = RUNS[0]
RUN_NAMES = dict(zip(RUNS, ("run 1", "run 2", "run 3"), strict=True))
# the constants the fit may change: where checkpointing's and each forward-backward call's
# Python falls in the step. The per-operator host constants and the device side were fitted
# per ATen operator and per step on bench/costs.py's 48 configurations (bench/fit_costs.py)
# and are kept: refitted here they trade off against each other (nearly collinear counts)
FITTED = ("forward_backward_s", "checkpoint_region_s", "recompute_op_s")
WITHIN = 5.0  # points
# the constants before this fit (memfit 0.x defaults until this fit replaced them): the whole
# of checkpointing's Python charged once per region in forward, none per recomputed operator
BEFORE = {"forward_backward_s": 5.6e-3, "checkpoint_region_s": 1.3e-3, "recompute_op_s": 0.0}


def host_times(a: dict, c: Calibration) -> np.ndarray:
    """memfit.cost.device.host_seconds plus what techniques noted, vectorised; recomputed
    operators also pay ``recompute_op_s``."""
    host = np.choose(a["stage"], [c.host_forward_op_s, c.host_backward_op_s, c.host_optimizer_op_s])
    none = a["kind"] == KINDS.index("none")
    host = np.where(none, c.host_view_op_s, host)
    recompute = a.get("recompute", np.zeros(len(none), dtype=bool))
    host = host + np.where(recompute & ~none, c.recompute_op_s, 0.0)
    host = host + a["tensors"] * c.host_tensor_s
    for kind in NOTED:
        host = host + a[f"noted_{kind}"] * getattr(c, f"{kind}_s")
    return host


def predict(a: dict, c: Calibration) -> float:
    return overlapped(host_times(a, c), device_times(a, c), a["sync"])


def load(cache: Path) -> list[dict]:
    """Every measured configuration with its trace (those that failed to trace keep why)."""
    traces = pickle.loads(cache.read_bytes())
    configs = []
    for run in RUNS:
        for config in measured_configurations(RESULTS / run):
            traced = traces.get(trace_key(config), {"error": "not traced"})
            config["trace"] = traced.get("ops")
            config["trace_error"] = traced.get("error")
            if config["trace"] is not None:  # re-priced as traced: the tracer's own figure
                priced = Calibration(**traced["calibration"])
                config["repricing_error"] = predict(config["trace"], priced) / traced["step_s"] - 1
            ab = config["label"].startswith("A/B")
            if run != TRAIN_RUN:
                config["set"] = f"held out: {RUN_NAMES[run]}"
            elif config["model"] in TRAIN_MODELS and not ab:
                config["set"] = "train"
            else:
                config["set"] = "held out: run 1's other models and A/B rows"
            configs.append(config)
    return configs


def _base_of(config: dict, configs: list[dict]) -> dict | None:
    """The unmodified step measured in the same run (the A/B rows: their own)."""
    ab = config["label"].startswith("A/B")
    for other in configs:
        same = other["run"] == config["run"] and other["model"] == config["model"]
        if same and other["plan"] == "unmodified" and other["label"].startswith("A/B") == ab:
            return other
    return None


def fit(configs: list[dict], start: Calibration) -> Calibration:
    """The FITTED constants, by least squares on the training set's two measured times per
    step: the step's (CPU and GPU overlapped: where the host time falls in the step matters)
    and the host's (the CPU time to issue it, measured apart: bench/cost_harness.py), both as
    log(predicted / measured); log space keeps every constant positive."""
    from scipy.optimize import minimize  # slow to import; only the fit needs it

    train = [
        c for c in configs
        if c["set"] == "train" and c["trace"] is not None and c["measured"].get("host_s")
    ]  # fmt: skip
    step = np.array([c["measured"]["step_s"] for c in train])
    host = np.array([c["measured"]["host_s"] for c in train])
    floor = 1e-7  # a constant the fit drives to nothing stays representable in log space

    def calibration(values: np.ndarray) -> Calibration:
        return dataclasses.replace(start, **dict(zip(FITTED, np.exp(values).tolist(), strict=True)))

    def loss(values: np.ndarray) -> float:
        c = calibration(values)
        steps = np.array([predict(t["trace"], c) for t in train])
        hosts = np.array([host_times(t["trace"], c).sum() for t in train])
        return float(np.mean(np.log(steps / step) ** 2) + np.mean(np.log(hosts / host) ** 2))

    x0 = np.log([max(floor, getattr(start, f)) for f in FITTED])
    found = minimize(loss, x0, method="Powell", options={"maxiter": 20000, "xtol": 1e-3})
    return calibration(found.x)


def overheads(configs: list[dict], c: Calibration, key: str) -> None:
    """Each configuration's predicted step time and overhead under ``c``, as ``key``."""
    for config in configs:
        if config["trace"] is not None:
            config[f"{key}_s"] = predict(config["trace"], c)
    for config in configs:
        base = _base_of(config, configs)
        if base is None or config is base or f"{key}_s" not in config or f"{key}_s" not in base:
            continue
        config[f"{key}_overhead"] = config[f"{key}_s"] / base[f"{key}_s"] - 1
        config["measured_overhead"] = config["measured"]["step_s"] / base["measured"]["step_s"] - 1
        config[f"{key}_error_points"] = 100 * (
            config[f"{key}_overhead"] - config["measured_overhead"]
        )


def _short(config: dict) -> str:
    """A configuration's short label (the frontier's: counts, not module names)."""
    return config.get("short", config["plan"])


def choices(configs: list[dict], key: str) -> list[dict]:
    """Per planned budget: among the configurations measured in that run for that model whose
    measured reserved peak fits it, the one predicted fastest against the one measured fastest."""
    found = []
    for config in configs:
        if "budget" not in config:
            continue
        fitting = [
            o
            for o in configs
            if o["run"] == config["run"] and o["model"] == config["model"]
            and not o["label"].startswith("A/B") and f"{key}_s" in o
            and o["measured"].get("peak_reserved", 1 << 62) <= config["budget"]
        ]  # fmt: skip
        if not fitting:
            continue
        fastest = min(fitting, key=lambda o: o["measured"]["step_s"])
        picked = min(fitting, key=lambda o: o[f"{key}_s"])
        slower = picked["measured"]["step_s"] / fastest["measured"]["step_s"] - 1
        if _short(picked) == _short(fastest):  # one configuration measured twice: one choice
            slower = 0.0
        found.append({"run": config["run"], "model": config["model"], "budget": config["label"],
                      "alternatives": len(fitting), "measured_fastest": _short(fastest),
                      "predicted_fastest": _short(picked), "picked_vs_fastest": slower,
                      "within_5_percent": bool(slower <= 0.05), "set": config["set"]})  # fmt: skip
    return found


SETS = ("train", "held out: run 1's other models and A/B rows", "held out: run 2",
        "held out: run 3", "held out", "all")  # fmt: skip


def _in(row: dict, which: str) -> bool:
    return which == "all" or row["set"] == which or row["set"].startswith(which + ":")


def summary(configs: list[dict], picks: dict[str, list[dict]]) -> dict:
    found: dict = {}
    for which in SETS:
        rows = [c for c in configs if "measured_overhead" in c and _in(c, which)]
        for key in ("before", "after"):
            errors = [abs(c[f"{key}_error_points"]) for c in rows if f"{key}_error_points" in c]
            chosen = [p for p in picks[key] if _in(p, which)]
            found[f"{which}, {key}"] = {
                "plans": len(errors),
                "within_5_points": int(sum(e <= WITHIN for e in errors)),
                "median_error_points": float(np.median(errors)) if errors else None,
                "budgets": len(chosen),
                "fastest_chosen": int(sum(p["within_5_percent"] for p in chosen)),
            }
    return found


def markdown(configs: list[dict], picks: dict, found: dict, before: Calibration,
             after: Calibration) -> str:  # fmt: skip
    lines = [
        "# Re-predicted overheads of the plans measured on the H200 (bench/replan_compare.py)",
        "",
        "These are predictions made on a CPU for the configurations bench/plans.py measured on "
        "one H200 (runs plans_h200.json.gz, plans_h200_run2.json.gz and "
        "plans_h200_run3.json.gz); the measured columns are "
        "those runs' figures, nothing was measured anew. *before*: the step-time constants "
        "as they were; *after*: the host constants re-fitted on the training set (run 1, "
        "GPT-2, LLaMA-1B, BERT-base, ResNet-50). Overheads are over the same run's unmodified "
        "step.",
        "",
        "| constant | before | after |",
        "|---|---:|---:|",
        *(
            f"| {f} | {getattr(before, f) * 1e6:.1f} µs | {getattr(after, f) * 1e6:.1f} µs |"
            for f in FITTED
        ),  # fmt: skip
        "",
        "| set | plans | within ±5 points before | after | median error before | after "
        "| budgets | fastest chosen before | after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for which in SETS:
        b, a = found[f"{which}, before"], found[f"{which}, after"]
        lines.append(
            f"| {which} | {b['plans']} | {b['within_5_points']} | {a['within_5_points']} "
            f"| {b['median_error_points']:.1f} | {a['median_error_points']:.1f} | {b['budgets']} "
            f"| {b['fastest_chosen']} | {a['fastest_chosen']} |"
        )
    lines += ["", "| run | model | configuration | set | measured | predicted before | after |",
              "|---|---|---|---|---:|---:|---:|"]  # fmt: skip
    for c in configs:
        if c["trace"] is None:
            lines.append(f"| {c['run']} | {c['model']} | {c['plan'][:70]} | {c['set']} "
                         f"| not traced: {str(c['trace_error'])[:80]} | | |")  # fmt: skip
        elif "measured_overhead" in c:
            lines.append(
                f"| {c['run']} | {c['model']} | {c['label']}: {_short(c)} | {c['set']} "
                f"| {c['measured_overhead']:+.1%} | {c['before_overhead']:+.1%} "
                f"({c['before_error_points']:+.0f}) | {c['after_overhead']:+.1%} "
                f"({c['after_error_points']:+.0f}) |"
            )
    lines += ["", "Choice among the configurations measured that fit each budget (the planner's "
              "choice, restricted to what was measured):", "",
              "| run | model | budget | fitting | measured fastest | predicted fastest before "
              "| after |", "|---|---|---|---:|---|---|---|"]  # fmt: skip
    for b, a in zip(picks["before"], picks["after"], strict=True):
        lines.append(
            f"| {b['run']} | {b['model']} | {b['budget']} | {b['alternatives']} "
            f"| {b['measured_fastest']} | {b['predicted_fastest']} "
            f"({b['picked_vs_fastest']:+.0%}) | {a['predicted_fastest']} "
            f"({a['picked_vs_fastest']:+.0%}) |"
        )
    return "\n".join(lines) + "\n"


def repeated(configs: list[dict]) -> list[dict]:
    """Configurations measured more than once in one run (the same techniques, or the
    unmodified step as anchor and in the A/B rows): how far apart their step times were, the
    measurements' own noise, against which ±5 points is judged."""
    groups: dict[tuple, list[dict]] = {}
    for c in configs:
        key = (c["run"], c["model"], json.dumps(c.get("techniques")), c["plan"].split(" ")[0])
        groups.setdefault(key, []).append(c)
    found = []
    for (run, model, _, _), same in groups.items():
        if len(same) > 1:
            steps = [c["measured"]["step_s"] for c in same]
            found.append({"run": run, "model": model, "plan": _short(same[0]),
                          "rows": [c["label"] for c in same], "step_s": steps,
                          "spread": max(steps) / min(steps) - 1})  # fmt: skip
    return found


def replanned_markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", "memfit.plan re-run on this CPU for run 1's budgets (bench/replan_plans.py): the "
             "plan chosen before and after, with the H200's measured step time where that "
             "configuration was measured in run 1 (else *not measured*):", "",
             "| model | budget | measured fastest that fits | plan before | after |",
             "|---|---|---|---|---|"]  # fmt: skip

    def cell(x: dict) -> str:
        measured = "not measured" if not x["measured_s"] else f"{1e3 * x['measured_s']:.1f} ms"
        vs = f", {x['vs_fastest']:+.0%} vs fastest" if "vs_fastest" in x else ""
        return f"{x['plan']} ({measured}{vs})"

    for r in rows:
        fastest = f"{r['measured_fastest']} ({1e3 * r['measured_fastest_s']:.1f} ms)"
        lines.append(f"| {r['model']} | {r['budget']} | {fastest} | {cell(r['before'])} "
                     f"| {cell(r['after']) if 'after' in r else ''} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def replanned(configs: list[dict]) -> list[dict]:
    """bench/replan_plans.py's plans, before and after, each matched with the configuration
    measured with the same techniques (if any) and the fastest measured that fits its budget."""
    found = []
    runs = {}
    for which in ("before", "after"):
        path = RESULTS / f"replan_plans_{which}.json"
        if path.is_file():
            runs[which] = {
                (r["model"], r["budget"]): r for r in json.loads(path.read_text())["rows"]
            }
    for key in runs.get("before", {}):
        name, label = key
        measured = [c for c in configs if c["run"] == TRAIN_RUN and c["model"] == name
                    and not c["label"].startswith("A/B")]  # fmt: skip
        budget = runs["before"][key]["budget_bytes"]
        fitting = [c for c in measured if c["measured"].get("peak_reserved", 1 << 62) <= budget]
        fastest = min(fitting, key=lambda c: c["measured"]["step_s"], default=None)
        row: dict = {"model": name, "budget": label,
                     "measured_fastest": fastest and _short(fastest),
                     "measured_fastest_s": fastest and fastest["measured"]["step_s"]}  # fmt: skip
        for which, plans in runs.items():
            new = plans.get(key, {})
            same = next((c for c in measured if _same(c, new.get("techniques"))), None)
            label = _short(same) if same else new.get("plan") or new.get("error", "")[:120]
            row[which] = {"plan": label,
                          "predicted_overhead": new.get("predicted_overhead"),
                          "measured_s": same and same["measured"]["step_s"],
                          "fits": same is not None and same in fitting}  # fmt: skip
            if same and fastest and row[which]["fits"]:
                row[which]["vs_fastest"] = (
                    same["measured"]["step_s"] / row["measured_fastest_s"] - 1
                )
        found.append(row)
    return found


def _same(config: dict, techniques: list | None) -> bool:
    if techniques is None:
        return False
    if not techniques:
        return config["plan"] == "unmodified"
    return config.get("techniques") == techniques


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memfit_replan.pkl"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    configs = load(args.cache)
    before = dataclasses.replace(Calibration(), **BEFORE)
    after = fit(configs, before)
    picks = {}
    for key, c in (("before", before), ("after", after)):
        overheads(configs, c, key)
        picks[key] = choices(configs, key)
    found = summary(configs, picks)
    rows = [{k: v for k, v in c.items() if k != "trace"} for c in configs]
    repriced = [abs(c["repricing_error"]) for c in configs if "repricing_error" in c]
    result = {
        "what": "re-predictions on a CPU of configurations measured on an H200; not measurements",
        "repricing_check": {
            "what": "largest relative difference between this script's vectorised pricing, "
            "with the constants a configuration was traced with, and the tracer's step time",
            "max": max(repriced, default=None),
        },
        "before": {f: getattr(before, f) for f in FITTED},
        "after": {f: getattr(after, f) for f in FITTED},
        "train": {"run": TRAIN_RUN, "models": TRAIN_MODELS},
        "summary": found,
        "configurations": rows,
        "choices": picks,
        "replanned": replanned(configs),
        "repeated": repeated(configs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replan_compare.json").write_text(json.dumps(result, indent=1, default=str))
    text = markdown(configs, picks, found, before, after) + replanned_markdown(result["replanned"])
    text += "\nThe same configuration measured twice in one run (the measurements' noise):\n\n"
    text += "".join(f"- {r['run']}, {r['model']}, {r['plan']}: "
                    f"{', '.join(f'{1e3 * x:.1f}' for x in r['step_s'])} ms "
                    f"({r['spread']:.0%} apart)\n" for r in result["repeated"])  # fmt: skip
    (args.out / "replan_compare.md").write_text(text)
    print(json.dumps({"after": result["after"], "summary": found}, indent=1))


if __name__ == "__main__":
    main()
