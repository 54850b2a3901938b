"""memfit.plan(..., measure=N) on the GPU: does timing the best plans pick a faster one?

python bench/measured_plans.py --out DIR [--models a,b] [--measure 4] [--smoke]
    ->  DIR/measured_plans.json.gz
python bench/measured_plans.py --table RESULT.json[.gz]   ->  the README's table

For bench/plans.py's models and budgets (three fractions of the unmodified activations and
full checkpointing's memory), each budget is planned on the GPU it runs on with ``measure=N``:
the predicted choice and the next N-1 fastest predicted plans that fit are timed side by side
(memfit.measure.plans: two visits each, the second round reversed) and the fastest within the
budget is taken. Per budget the JSON holds the plan, the planning time (timing included), and
the timed plans in the order timed, the predicted choice first; per model the unmodified step
and Hugging Face's full checkpointing (memfit's of every block where the model has none),
measured as bench/plans.py does, as the alternatives the issue names.

The summary per budget: the chosen plan's measured step against the predicted choice's (the
same timing loop), and against the fastest that fits of everything measured (the timed plans
and the anchors whose reserved peak is within the budget).

--smoke runs the tiny models on the CPU: the same code, the plans timed with the wall clock
(``time_plans(device=cpu)``), no memory counters.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
import memfit.measure.plans as timing  # noqa: E402
import memfit.plan.measured as measured  # noqa: E402
from cost_harness import Harness, environment  # noqa: E402
from memfit.devices import get_device  # noqa: E402
from plans import DEVICE, MODELS, _settings, budgets_of, measure, spec_of  # noqa: E402
from result_files import read_json  # noqa: E402

ORDER = ("transformer-encoder", "qwen2-shaped", "tv-resnet50", "hf-llama-1b")


def plan_row(name: str, tiny: bool, label: str, budget: int, count: int) -> dict:
    """One budget planned with ``measure=count``: the plan and its timed alternatives."""
    builder, spec = MODELS[name][0], spec_of(name, tiny)
    row: dict = {"label": label, "budget": budget}
    started = time.perf_counter()
    try:
        plan = memfit.plan(lambda: builder(tiny), spec, budget=budget, measure=count,
                           **_settings(name))  # fmt: skip
    except memfit.MemfitError as error:
        row.update(error=str(error), plan_s=time.perf_counter() - started)
        return row
    row["plan_s"] = time.perf_counter() - started
    row["plan"] = plan.to_dict()
    row["timed"] = [
        {
            "label": p.label.removesuffix(" (measured)"),
            "step_s": p.step_time_s,
            "peak_reserved": p.peak_reserved,
            "chosen": p.chosen,
        }  # fmt: skip
        for p in plan.frontier
        if p.measured
    ]
    return row


def summarize(row: dict, anchors: dict) -> dict:
    """The chosen plan against the predicted choice and the fastest measured that fits."""
    budget, timed = row["budget"], row.get("timed") or []
    if not timed:
        return {"error": row.get("error", "nothing timed")[:300]}
    chosen = next((t for t in timed if t["chosen"]), None)
    fitting = {t["label"]: t["step_s"] for t in timed if t["peak_reserved"] <= budget}
    fitting.update({k: a["step_s"] for k, a in anchors.items() if a["peak_reserved"] <= budget})
    found: dict = {"predicted_choice": timed[0]["label"], "timed": len(timed)}
    if chosen is None:
        return {**found, "chosen": None, "note": "none of the timed plans fit the budget"}
    fastest = min(fitting, key=fitting.get)
    found.update(
        chosen=chosen["label"],
        chosen_s=chosen["step_s"],
        vs_predicted_choice=chosen["step_s"] / timed[0]["step_s"] - 1,
        fastest_that_fits=fastest,
        vs_fastest=chosen["step_s"] / fitting[fastest] - 1,
        reserved_over_budget=chosen["peak_reserved"] > budget,
    )
    return found


def table(path: Path) -> str:
    """The README's table of a result file, and the counts the issue's targets need."""
    result = read_json(path)
    env = result["environment"]
    lines = [
        f"{path.name}: {env.get('gpu')}, torch {env.get('torch')}, measure={result['measure']}, "
        f"{result.get('total_s', 0):.0f} s, {len(result['errors'])} errors",
        "",
        "| model | budget | predicted choice, measured | chosen (measured) | vs predicted choice "
        "| vs fastest that fits | reserved | planning |",
        "|---|---|---|---|---:|---|---:|---:|",
    ]
    within, chosen_rows = 0, 0
    for key, row in result["rows"].items():
        name, label = key.split(" | ")
        if label == "anchors":
            for anchor, a in row.items():
                if isinstance(a, dict):
                    lines.append(f"| {name} | {anchor} | | {a['step_s'] * 1e3:.1f} ms | | "
                                 f"| {a['peak_reserved'] / 2**30:.2f} GiB | |")  # fmt: skip
            continue
        s = row["summary"]
        budget = f"{label}, {row['budget'] / 2**30:.2f} GiB"
        if not s.get("chosen"):
            lines.append(f"| {name} | {budget} | {s.get('error') or s.get('note')} | | | | | |")
            continue
        timed = {t["label"]: t for t in row["timed"]}
        first = timed[s["predicted_choice"]]
        chosen = timed[s["chosen"]]
        fastest = "fastest" if s["vs_fastest"] <= 0 else (
            f"{s['vs_fastest']:+.1%} vs {s['fastest_that_fits']}")  # fmt: skip
        chosen_rows += 1
        within += s["vs_fastest"] <= 0.05
        lines.append(
            f"| {name} | {budget} | {s['predicted_choice']}, {first['step_s'] * 1e3:.1f} ms | "
            f"{s['chosen']}, {chosen['step_s'] * 1e3:.1f} ms | {s['vs_predicted_choice']:+.1%} | "
            f"{fastest} | {chosen['peak_reserved'] / 2**30:.2f} GiB | {row['plan_s']:.0f} s |"
        )
    lines += ["", f"- chosen plan within 5% of the fastest measured that fits: {within} of "
              f"{chosen_rows}"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, help="print the table of this result file")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--models", default=",".join(ORDER))
    parser.add_argument("--measure", type=int, default=4)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.out is None:
        parser.error("--out DIR is required (or --table RESULT.json)")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; use --smoke to test the script on a CPU")
    if args.smoke:  # the same code on a CPU: the wall clock times the plans
        measured.local_device = lambda: get_device(DEVICE)
        timing.time_plans = functools.partial(timing.time_plans, device=torch.device("cpu"))
    harness = Harness(device, warmup=1 if args.smoke else 2, steps=1 if args.smoke else 6)
    args.out.mkdir(parents=True, exist_ok=True)
    # compressed: each row keeps its plan's frontier and profile (2-6 MB a run as JSON)
    path = args.out / ("measured_plans" + ("_smoke" if args.smoke else "") + ".json.gz")
    result: dict = {"environment": environment(), "planned_for": DEVICE, "measure": args.measure,
                    "smoke": args.smoke, "rows": {}, "errors": []}  # fmt: skip
    started = time.perf_counter()

    def write() -> None:  # whole or not at all: a run cut short keeps the rows before
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(gzip.compress(json.dumps(result, indent=1).encode()))
        partial.replace(path)

    def record(key: str, row: dict) -> None:
        row["at_s"] = round(time.perf_counter() - started, 1)
        result["rows"][key] = row
        write()
        print(f"[{row['at_s']:6.1f} s] {key}: {row.get('summary', '')}", flush=True)

    for name in args.models.split(","):
        try:
            anchors = {
                anchor: measure(harness, name, hf_checkpointing=hf)
                for anchor, hf in (("unmodified", False), ("hf full checkpointing", True))
            }
            record(f"{name} | anchors", dict(anchors))
            for label, budget in budgets_of(name, args.smoke).items():
                row = plan_row(name, args.smoke, label, budget, args.measure)
                row["summary"] = summarize(row, anchors)
                record(f"{name} | {label}", row)
        except Exception:
            result["errors"].append(f"{name}: {traceback.format_exc()[-3000:]}")
            print(result["errors"][-1], flush=True)
    result["total_s"] = time.perf_counter() - started
    write()
    print(f"wrote {path} in {result['total_s']:.0f} s; {len(result['errors'])} errors", flush=True)


if __name__ == "__main__":
    main()
