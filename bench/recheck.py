"""Do the committed GPU results still describe this code? (CPU only, no GPU needed)

python bench/recheck.py [--only plans|predictions]
  -> bench/results/recheck_plans.json, recheck_predictions.json; a line per case

Estimating and planning are CPU-only and deterministic, so the predictions of
bench/results/accuracy_h200.json and the plans of bench/results/frontier_h200.json can be redone
here: when they come out the same, the GPU measurements beside them still apply to this code.
The Hugging Face models come from the installed transformers: run with the GPU machine's
version (each output file names the versions it ran with); another version may build them
differently (5.24's LLaMA keeps 1.07 GB less than 5.23's at batch 4, sequence 2048).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from frontier import OPTIMIZER, PRECISION  # noqa: E402
from memfit.trace.estimate import trace_step  # noqa: E402
from models import EXTERNAL  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def predictions() -> None:
    accuracy = json.loads((RESULTS / "accuracy_h200.json").read_text())
    rows = []
    for then in accuracy["rows"]:
        name = then["model"]
        if name in EXTERNAL:
            build, spec, loss_fn, forward = EXTERNAL[name]
            model, batch = build, spec
        else:
            model, batch, loss_fn, forward = name, None, None, None
        profile = trace_step(
            model,
            batch,
            loss_fn=loss_fn,
            forward=forward,
            optimizer=then["optimizer"],
            precision=then["precision"],
            device="h200",
        ).profile
        row = {"model": name, "precision": then["precision"]}
        for key in ("allocated", "reserved"):
            row[f"measured_run_predicted_{key}"] = then[f"predicted_{key}"]
            row[f"predicted_{key}"] = getattr(profile, f"peak_{key}")
        row["same"] = all(
            row[f"predicted_{k}"] == then[f"predicted_{k}"] for k in ("allocated", "reserved")
        )
        rows.append(row)
        print(f"{name:15s} {then['precision']:10s} {'same' if row['same'] else 'DIFFERS'}")
    (RESULTS / "recheck_predictions.json").write_text(json.dumps(with_versions(rows), indent=1))


def plans() -> None:
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
                assert plan.profile is not None
                predicted = {
                    "predicted_reserved": plan.profile.peak_reserved,
                    "predicted_step_s": plan.step_time_s,
                    "predicted_baseline_s": plan.baseline_step_time_s,
                }
            except memfit.MemfitError as error:
                now, predicted = "infeasible: " + str(error).split(":")[0], {}
            then = measured.get("plan") or "infeasible: " + measured["error"].split(":")[0]
            row = {"model": name, "label": measured["label"], "measured_plan": then, "plan": now}
            row.update(same=now == then, plan_s=time.perf_counter() - started)
            row.update(budget=measured["budget"], **predicted)
            rows.append(row)
            print(
                f"{name:15s} {measured['label']:26s} {'same' if row['same'] else 'DIFFERS'}: {now}",
                flush=True,
            )
    (RESULTS / "recheck_plans.json").write_text(json.dumps(with_versions(rows), indent=1))


def with_versions(rows: list[dict]) -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["plans", "predictions"])
    only = parser.parse_args().only
    if only in (None, "predictions"):
        predictions()
    if only in (None, "plans"):
        plans()


if __name__ == "__main__":
    main()
