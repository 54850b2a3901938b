"""The README's plan table and the issue's targets, from bench/plans.py's and fit_costs' JSON.

python bench/plans_table.py RESULT.json [...]      plans measured against the alternatives
python bench/plans_table.py --fit FIT.json         the step-time model: fitted vs held-out models

Prints Markdown. For each model: the unmodified step and Hugging Face's full checkpointing, then
memfit's plan at each budget (measured reserved, step time, measured and predicted overhead over
the unmodified step, and the plan against the fastest measured configuration that fits the
budget). Then each target with how many rows meet it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from result_files import read_json  # noqa: E402

GiB = 1024**3


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f}%".replace("-", "−")


def plan_rows(rows: dict) -> list[str]:
    """One Markdown row per anchor and per planned budget, model by model."""
    lines = [
        "| model | budget | plan chosen | reserved | step | vs unmodified (predicted) "
        "| vs fastest that fits |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for key, row in rows.items():
        name, label = key.split(" | ", 1)
        if label in ("anchors", "compile anchors"):
            base = row.get("unmodified") or row.get("compiled")
            for anchor, error in row.get("failed", {}).items():
                reason = error.strip().splitlines()[-1][:80] if error.strip() else "?"
                lines.append(f"| {name} | {anchor} | failed: {reason} | | | | |")
            for anchor, measured in row.items():
                if not isinstance(measured, dict) or anchor == "failed":
                    continue  # the row's time stamp, the failures (above)
                overhead = (
                    measured["step_s"] / base["step_s"] - 1
                    if base is not None and measured is not base
                    else None
                )
                lines.append(
                    f"| {name} | {anchor} | | {_gib(measured['peak_reserved'])} "
                    f"| {1e3 * measured['step_s']:.1f} ms | {_pct(overhead)} | |"
                )
        elif "budget" in row:
            lines.append(_plan_line(name, row, "compiled, " if "compiled plan" in label else ""))
        elif "overhead" in row:  # the chunked loss A/B
            lines.append(
                f"| {name} | (A/B, alternated steps) | chunked loss x4 | "
                f"| {1e3 * row['median_chunked_s']:.1f} ms "
                f"(unmodified {1e3 * row['median_unmodified_s']:.1f}) | {_pct(row['overhead'])} | |"
            )
    return lines


def _plan_line(name: str, row: dict, compiled: str) -> str:
    budget = f"{compiled}{row['label']}, {_gib(row['budget'])}"
    if "error" in row:
        return f"| {name} | {budget} | refused: {row['error'][:80]} | | | | |"
    plan = _short_label(row["plan"]) if "plan" in row else "?"
    measured, summary = row.get("measured"), row.get("summary", {})
    if measured is None:
        why = summary.get("measure_error") or str(row.get("measure_error", "")).strip()[-80:]
        return f"| {name} | {budget} | {plan} | not measured{': ' + why if why else ''} | | | |"
    over = "**over budget** " if summary.get("violation") else ""
    versus = summary.get("plan_vs_fastest")
    fastest = summary.get("fastest_fitting", "")
    vs = "fastest" if fastest == "memfit plan" else f"{_pct(versus)} vs {fastest}" * bool(fastest)
    predicted = summary.get("predicted_overhead")
    predicted = "" if predicted is None else f" ({_pct(predicted)})"
    return (
        f"| {name} | {budget} | {plan} | {over}{_gib(measured['peak_reserved'])} "
        f"| {1e3 * measured['step_s']:.1f} ms | {_pct(summary.get('measured_overhead'))}"
        f"{predicted} | {vs} |"
    )


def _short_label(plan: dict) -> str:
    """The frontier's label of the chosen plan (counts, not module names), else the plan's."""
    chosen = [p["label"] for p in plan.get("frontier", ()) if p.get("chosen")]
    label = chosen[0] if chosen else memfit.Plan.from_dict(plan).label or "unmodified"
    return label.removesuffix(" (traced)")


def targets(rows: dict) -> list[str]:
    """The issue's targets, counted over the measured plans (eager and compiled apart)."""
    measured = {k: r for k, r in rows.items() if "measured" in r and "summary" in r}
    eager = [r for k, r in measured.items() if "compiled plan" not in k]
    compiled = [r for k, r in measured.items() if "compiled plan" in k]
    errors = [abs(r["summary"]["overhead_error_points"]) for r in eager]
    within = [r for r in eager if r["summary"].get("plan_vs_fastest", 1) <= 0.05]
    worst = max((r["summary"].get("plan_vs_fastest", 0) for r in eager), default=0)
    half = [
        f"{k.split(' | ')[0]} {_pct(r['summary']['measured_overhead'])}"
        for k, r in measured.items()
        if r in eager and r["label"] == "activations x0.5"
    ]
    ab = [f"{k.split(' | ')[0]} {_pct(r['overhead'])}" for k, r in rows.items() if "overhead" in r]
    kept = [
        f"{k.split(' | ')[0]} {_gib(r['measured']['peak_reserved'])} for {_gib(r['budget'])}"
        for k, r in rows.items()
        if "compiled plan" in k and "measured" in r
    ]
    paired = [
        abs(r["summary"]["paired_error_points"])
        for r in eager
        if "paired_error_points" in r["summary"]
    ]
    median = statistics.median(errors) if errors else 0.0
    return [
        f"- predicted overhead within ±5 points of measured: {sum(e <= 5 for e in errors)} of "
        f"{len(errors)} eager plans (median error {median:.1f})",
        *(
            [
                f"- the same, overhead from steps alternated with the unmodified step's: "
                f"{sum(e <= 5 for e in paired)} of {len(paired)} (median error "
                f"{statistics.median(paired):.1f})"
            ]
            if paired
            else []
        ),
        f"- plan within 5% of the fastest measured alternative that fits: {len(within)} of "
        f"{len(eager)} (worst {_pct(worst)})",
        f"- measured reserved above the budget: "
        f"{sum(bool(r['summary'].get('violation')) for r in eager)} of {len(eager)} eager, "
        f"{sum(bool(r['summary'].get('violation')) for r in compiled)} of {len(compiled)} compiled",
        f"- at half the activations, vs unmodified: {', '.join(half) or 'not measured'}",
        f"- chunked loss x4 vs unmodified (A/B): {', '.join(ab) or 'not measured'}",
        f"- compiled plans (memfit plan --compile): {', '.join(kept) or 'not measured'}",
    ]


def fit_table(fit: dict) -> list[str]:
    """Predicted against measured overhead per configuration, fitted and held-out models."""
    lines = [
        "| set | model | configurations | within ±5 points | median abs. error (points) "
        "| step time: median abs. error |",
        "|---|---|---:|---:|---:|---:|",
    ]
    models: dict[tuple[str, str], list[str]] = {}
    for key, found in fit["overheads"].items():
        models.setdefault((found["set"], key.split(" | ")[0]), []).append(key)
    for (which, model), keys in sorted(models.items()):
        errors = [abs(fit["overheads"][k]["error_points"]) for k in keys]
        steps = [fit["rows"][k] for k in [f"{model} | unmodified", *keys] if k in fit["rows"]]
        step_errors = [abs(s["predicted_step_s"] / s["measured_step_s"] - 1) for s in steps]
        lines.append(
            f"| {which} | {model} | {len(keys)} | {sum(e <= 5 for e in errors)} "
            f"| {statistics.median(errors):.1f} | {100 * statistics.median(step_errors):.1f}% |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--fit", type=Path)
    args = parser.parse_args()
    if args.fit:
        print("\n".join(fit_table(json.loads(args.fit.read_text()))))
    for path in args.results:
        data = read_json(path)
        print(f"\n{path.name}: {data['environment'].get('gpu') or 'CPU'}, "
              f"torch {data['environment'].get('torch')}, {data.get('total_s', 0):.0f} s, "
              f"{len(data['errors'])} errors\n")  # fmt: skip
        print("\n".join(plan_rows(data["rows"])))
        print()
        print("\n".join(targets(data["rows"])))


if __name__ == "__main__":
    main()
