"""Every budget of the committed H200 plan runs, planned again on this CPU with this checkout.

python bench/replan_budgets.py OUT.jsonl      (transformers 5.17, the GPU machine's, for the
                                               Hugging Face models: plans_h200*.json used it)

One JSON line per budget: the chosen plan's label, predicted step time and reserved peak, how
many candidates the search traced, and the planning time. Run it on two checkouts to see what
a change to the planner moves (bench/results/replan_budgets_*.jsonl); these are predictions,
the H200 measured the plans of the run files, not these.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from plans import MODELS, _settings, spec_of  # noqa: E402
from result_files import read_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the latest run of each model: run 3 (encoder, LLaMA-1B, Qwen2), run 4 (ResNet-50, BERT-base),
# run 1 for the others
RUNS = {
    "plans_h200_run3.json.gz": None,
    "plans_h200_run4.json.gz": None,
    "plans_h200.json.gz": ("hf-gpt2", "hf-gpt2-medium", "mistral-8l"),
}


def main() -> None:
    warnings.filterwarnings("ignore")
    with open(sys.argv[1], "w") as out:
        for run, only in RUNS.items():
            rows = read_json(RESULTS / run)["rows"]
            for key, row in rows.items():
                name = key.split(" | ")[0]
                if "budget" not in row or (only and name not in only) or "compiled" in key:
                    continue
                builder, spec = MODELS[name][0], spec_of(name, False)
                started = time.perf_counter()
                try:
                    plan = memfit.plan(
                        lambda b=builder: b(False), spec, budget=row["budget"], **_settings(name)
                    )
                    found = {
                        "label": next(p.label for p in plan.frontier if p.chosen),
                        "step_s": plan.step_time_s,
                        "peak_reserved": plan.profile.peak_reserved,
                        "traced": sum(p.label.endswith("(traced)") for p in plan.frontier),
                    }
                except memfit.MemfitError as error:
                    found = {"error": str(error)}
                found.update(run=run, key=key, budget=row["budget"])
                found["plan_s"] = round(time.perf_counter() - started, 1)
                print(json.dumps(found), file=out, flush=True)


if __name__ == "__main__":
    main()
