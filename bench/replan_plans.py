"""memfit.plan re-run, on this CPU, for budgets bench/plans.py measured on the H200: which plan
it chooses with the step-time constants before and after bench/replan_compare.py's re-fit,
and whether that is a configuration measured there, and the fastest measured that fits.

python bench/replan_plans.py --which before|after [--budgets MODEL:LABEL,...] [--out F]
  ->  F (default bench/results/replan_plans_<which>.json); bench/replan_compare.py reads both

``--which before`` plans with the constants as they were (written to a calibration file in a
temporary cache directory, ``memfit calibrate``'s place: the planner and the tracer read it);
``after`` with memfit's defaults. The plans are predictions; the step times quoted for them
are the H200's measurements of the same techniques, where that configuration was measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.cost import Calibration  # noqa: E402
from plans import MODELS, _settings, spec_of  # noqa: E402
from plans_table import _short_label  # noqa: E402
from replan_compare import BEFORE  # noqa: E402
from replan_trace import RESULTS, RUNS  # noqa: E402
from result_files import read_json  # noqa: E402

# run 1's budgets whose plan was not within 5% of the fastest measured that fits, and two whose
# plan micro-batched (the 531.6 and 391.6 ms plans)
BUDGETS = (
    "transformer-encoder:activations x0.75",
    "transformer-encoder:activations x0.3",
    "transformer-encoder:full checkpointing's",
    "hf-bert-base:activations x0.75",
    "hf-gpt2-medium:full checkpointing's",
    "hf-llama-1b:full checkpointing's",
    "qwen2-shaped:activations x0.5",
)


def use_constants(which: str) -> None:
    """Point memfit's calibration file at the constants ``which`` (before: a temporary one)."""
    if which == "before":
        home = Path(tempfile.mkdtemp(prefix="memfit_before_"))
        constants = dataclasses.asdict(dataclasses.replace(Calibration(), **BEFORE))
        (home / "memfit").mkdir()
        (home / "memfit" / "calibration.json").write_text(json.dumps({"h200": constants}))
        os.environ["XDG_CACHE_HOME"] = str(home)
    else:
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="memfit_after_")  # none saved


def replan(name: str, label: str, run: dict) -> dict:
    measured = run["rows"][f"{name} | {label}"]
    settings = {**_settings(name), "device": "h200"}
    started = time.perf_counter()
    row: dict = {"model": name, "budget": label, "budget_bytes": measured["budget"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            plan = memfit.plan(
                lambda: MODELS[name][0](False), spec_of(name, False),
                budget=measured["budget"], **settings,
            )  # fmt: skip
            row.update(plan=_short_label(plan.to_dict()), techniques=plan.to_dict()["techniques"],
                       predicted_s=plan.step_time_s, predicted_overhead=plan.overhead,
                       notes=list(plan.notes))  # fmt: skip
        except memfit.MemfitError as error:
            row["error"] = str(error)[:500]
    row["plan_s"] = time.perf_counter() - started
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("before", "after"), required=True)
    parser.add_argument("--budgets", default=",".join(BUDGETS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    use_constants(args.which)
    run = read_json(RESULTS / RUNS[0])
    out = args.out or RESULTS / f"replan_plans_{args.which}.json"
    rows = []
    for item in args.budgets.split(","):
        name, label = item.split(":", 1)
        rows.append(replan(name, label, run))
        out.write_text(json.dumps({"which": args.which, "run": RUNS[0], "rows": rows}, indent=1))
        print(f"{name} | {label}: {rows[-1].get('plan') or rows[-1].get('error')} "
              f"({rows[-1]['plan_s']:.0f} s)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
