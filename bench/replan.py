"""Do the committed frontier measurements still describe this code's plans? (CPU only)

python bench/replan.py  ->  bench/results/replan_check.json, a line per budget

Planning is CPU-only and deterministic, so re-planning each (model, budget) of
bench/results/frontier_h200.json here and comparing the chosen plan with the one measured there
says whether those GPU measurements still apply to the current planner.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from frontier import OPTIMIZER, PRECISION  # noqa: E402
from models import EXTERNAL  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    frontier = json.loads((RESULTS / "frontier_h200.json").read_text())
    rows = []
    for name, data in frontier["models"].items():
        builder, spec = EXTERNAL[name][0], EXTERNAL[name][1]
        for measured in data["plans"]:
            started = time.perf_counter()
            try:
                plan = memfit.plan(
                    builder,
                    spec,
                    budget=measured["budget"],
                    device="h200",
                    optimizer=OPTIMIZER,
                    precision=PRECISION,
                )
                now = plan.label
            except memfit.MemfitError as error:
                now = "infeasible: " + str(error).split(":")[0]
            then = measured.get("plan") or "infeasible: " + measured["error"].split(":")[0]
            row = {"model": name, "label": measured["label"], "measured_plan": then, "plan": now}
            row.update(same=now == then, plan_s=time.perf_counter() - started)
            rows.append(row)
            print(
                f"{name:15s} {measured['label']:26s} {'same' if row['same'] else 'DIFFERS'}: {now}",
                flush=True,
            )
    (RESULTS / "replan_check.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
