"""What the planner's last two phases change: near misses traced, and expandable segments.

python bench/plan_phases.py --out bench/results/plan_phases.json [--models ...] [--tiny]

For bench/plans.py's models and budgets (0.75, 0.5 and 0.3 of the predicted activations and
memfit's predicted full-checkpointing memory), planned on this CPU with the current code:

* every candidate the search traces, its screened reserved peak (corrected by the traces
  before it, as the search ranks it) beside the traced one: the spread ``NEAR_MISS`` must cover;
* where near misses were traced, the plan again without them (``NEAR_MISS_TRACES`` set to 0);
* where the plan has expandable segments, the plan again without them (left out of ``allow``);

each with its predicted step time, reserved peak and planning time. Predictions, not
measurements: bench/plans.py measures the plans on a GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
import memfit.plan.verify as verify  # noqa: E402
from memfit.plan.settings import MARGIN  # noqa: E402
from memfit.plan.verify import NEAR_MISS  # noqa: E402
from memfit.techniques import ExpandableSegments, default_allow  # noqa: E402
from plans import MODELS, _settings, budgets_of, spec_of  # noqa: E402

_records: list[dict] = []
_NEAR_MISS_TRACES = verify.NEAR_MISS_TRACES
_learn = verify.Verified.learn
WITHOUT_EXPANDABLE = tuple(a for a in default_allow() if a != "expandable_segments")


def _recording_learn(self, candidate, traced) -> None:
    _records.append(
        {
            "candidate": candidate.label(),
            "screened": int(self.peak(candidate)),
            "traced": traced.profile.peak_reserved,
            "traced_allocated": traced.profile.peak_allocated,
        }
    )
    _learn(self, candidate, traced)


verify.Verified.learn = _recording_learn  # type: ignore[method-assign]


def plan_once(name: str, tiny: bool, budget: int, near: bool = True, allow=None) -> dict:
    verify.NEAR_MISS_TRACES = _NEAR_MISS_TRACES if near else 0
    del _records[:]
    started = time.perf_counter()
    try:
        build, spec = (lambda: MODELS[name][0](tiny)), spec_of(name, tiny)
        plan = memfit.plan(build, spec, budget=budget, allow=allow, **_settings(name))
        chosen = {"plan": plan.label, "predicted_s": plan.step_time_s}
        chosen["predicted_reserved"] = plan.profile.peak_reserved if plan.profile else None
        chosen["expandable"] = bool(plan.of(ExpandableSegments))
    except memfit.MemfitError as error:
        chosen = {"error": str(error).splitlines()[0][:200]}
    chosen["plan_s"] = round(time.perf_counter() - started, 2)
    return chosen


def plan_row(name: str, tiny: bool, label: str, budget: int) -> dict:
    row: dict = {"model": name, "label": label, "budget": budget}
    row["current"] = plan_once(name, tiny, budget)
    row["traces"] = [dict(r) for r in _records]
    row["near_misses"] = near_misses(row)
    if row["near_misses"]:
        row["without_near_misses"] = plan_once(name, tiny, budget, near=False)
    if row["current"].get("expandable"):
        row["without_expandable"] = plan_once(name, tiny, budget, allow=WITHOUT_EXPANDABLE)
    return row


def near_misses(row: dict) -> list[dict]:
    """The traces of candidates screened above the target, within ``NEAR_MISS`` of it (those
    further above are the fallback's, traced when nothing fits)."""
    target = row["budget"] * (1 - MARGIN)
    return [t for t in row["traces"] if target < t["screened"] <= target * (1 + NEAR_MISS)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke test)")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        for label, budget in budgets_of(name, args.tiny).items():
            rows.append(plan_row(name, args.tiny, label, budget))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "traces"})[:600])
            result = {"rows": rows, "summary": summary(rows)}
            Path(args.out).write_text(json.dumps(result, indent=1))


def summary(rows: list[dict]) -> dict:
    ratios = [t["traced"] / t["screened"] for r in rows for t in r["traces"] if t["screened"]]
    changed = {
        phase: [
            {
                "model": r["model"],
                "label": r["label"],
                "without": _chosen(r[f"without_{phase}"]),
                "with": _chosen(r["current"]),
                "predicted_s": [
                    r[f"without_{phase}"].get("predicted_s"),
                    r["current"].get("predicted_s"),
                ],
                "plan_s": [r[f"without_{phase}"]["plan_s"], r["current"]["plan_s"]],
            }
            for r in rows
            if f"without_{phase}" in r and _chosen(r[f"without_{phase}"]) != _chosen(r["current"])
        ]
        for phase in ("near_misses", "expandable")
    }
    return {
        "budgets": len(rows),
        "traces": len(ratios),
        "traced_over_screened": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "more_than_5_percent_below": sum(x < 0.95 for x in ratios),
        }
        if ratios
        else {},
        "near_miss_traces": sum(len(r["near_misses"]) for r in rows),
        "near_misses_fitted": sum(
            t["traced"] <= r["budget"] * (1 - MARGIN) for r in rows for t in r["near_misses"]
        ),
        "plans_changed": changed,
        "planning_s": sum(r["current"]["plan_s"] for r in rows),
    }


def _chosen(result: dict) -> str:
    return result.get("plan") or result.get("error", "")


if __name__ == "__main__":
    main()
