"""Fit the host price of an offloaded checkpoint boundary (``Calibration.offload_tensor_s``) on one
model's ladder rows and check it on the others (CPU only: predictions against committed
measurements).

python bench/fit_offload.py --out FILE [--fit tv-resnet50] [--grid 0,0.5,1,1.5,2] [--rows FILE]

The ladder probe (bench/results/ladder_probe_h100.json, H100) measured each rung with and without
its checkpoint boundaries offloaded. The step-time model overlapped the copies with the whole
step and predicted no cost; the measured cost was 2.7-11.8 ms on the encoder and 3.9-14.2 ms on
ResNet-50, and the steps' CPU (enqueue) time grew with it. Each rung with boundaries is
predicted again with ``offload_tensor_s`` (milliseconds per moved tensor, in forward and backward
together, added to the CPU's time) at every grid value; the value with the least squared error
in overhead points on the ``--fit`` model is kept, and the other model's rows and LLaMA-1B's two
plans with boundaries from plans run 8 (bench/results/plans_h100_run8.json.gz) are the check.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("MEMFIT_BENCH_DEVICE", "h100-80gb")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
import memfit.trace.step_phases as step_phases  # noqa: E402
from memfit.cost import Calibration  # noqa: E402
from plans import MODELS, _settings, spec_of  # noqa: E402
from result_files import read_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
_default_calibration = step_phases.load_calibration


@contextlib.contextmanager
def calibration_as(change: Callable[[Calibration], Calibration]) -> Iterator[None]:
    """Estimates inside run with ``change`` of the calibration they would load."""
    step_phases.load_calibration = lambda spec: change(_default_calibration(spec))
    try:
        yield
    finally:
        step_phases.load_calibration = _default_calibration


def offload_priced(offload_tensor_s: float) -> contextlib.AbstractContextManager[None]:
    """Estimates inside run with ``offload_tensor_s`` as the calibration's price."""
    return calibration_as(lambda c: dataclasses.replace(c, offload_tensor_s=offload_tensor_s))


def predicted_s(name: str, techniques: list, offload_tensor_s: float) -> float:
    """The predicted step time with ``offload_tensor_s`` as the calibration's price."""
    builder, spec = MODELS[name][0], spec_of(name, False)
    with offload_priced(offload_tensor_s):
        profile = memfit.estimate(lambda: builder(False), spec, plan=techniques, **_settings(name))
    return profile.step_time_s


def cases() -> list[dict]:
    """Every measured configuration with offloaded boundaries, with its measured overhead."""
    found = []
    ladder = json.loads((RESULTS / "ladder_probe_h100.json").read_text())["rows"]
    unmodified = {r["model"]: r["measured"]["step_s"] for r in ladder if r["plan"] == "unmodified"}
    for row in ladder:
        if "boundaries to host" in row["plan"]:
            found.append(
                {
                    "model": row["model"],
                    "plan": row["plan"],
                    "techniques": memfit.Plan.from_dict({"techniques": row["techniques"]}),
                    "measured_overhead": row["measured"]["step_s"] / unmodified[row["model"]] - 1,
                }
            )
    run8 = read_json(RESULTS / "plans_h100_run8.json.gz")["rows"]
    base = run8["hf-llama-1b | anchors"]["unmodified"]["step_s"]
    for key, row in run8.items():
        if key.startswith("hf-llama-1b |") and "offload_activations" in json.dumps(row.get("plan")):
            found.append(
                {
                    "model": "hf-llama-1b",
                    "plan": row["label"],
                    "techniques": memfit.Plan.from_dict(row["plan"]),
                    "measured_overhead": row["measured"]["step_s"] / base - 1,
                }
            )
    return found


def predicted_rows(grid: list[float]) -> list[dict]:
    """Every case predicted at every price of ``grid``, as overheads over the unmodified step."""
    rows = cases()
    baselines = {name: predicted_s(name, [], 0.0) for name in {c["model"] for c in rows}}
    for case in rows:
        plan = case.pop("techniques")
        case["predicted_overhead"] = {
            f"{c * 1e3:g} ms": predicted_s(case["model"], list(plan.techniques), c)
            / baselines[case["model"]]
            - 1
            for c in grid
        }
        print(case["model"], case["plan"], case, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fit", default="tv-resnet50")
    parser.add_argument("--grid", default="0,0.5,1,1.5,2")
    parser.add_argument(
        "--rows", type=Path, default=None,
        help="the predictions of an earlier run (its output file): only fit and check again",
    )  # fmt: skip
    args = parser.parse_args()
    grid = [float(x) * 1e-3 for x in args.grid.split(",")]
    rows = json.loads(args.rows.read_text())["rows"] if args.rows else predicted_rows(grid)
    errors = {
        key: sum(
            (100 * (c["predicted_overhead"][key] - c["measured_overhead"])) ** 2
            for c in rows
            if c["model"] == args.fit
        )
        for key in rows[0]["predicted_overhead"]
    }
    best = min(errors, key=errors.get)
    held_out = [c for c in rows if c["model"] != args.fit]

    def within(group: list[dict], key: str) -> str:
        points = [abs(100 * (c["predicted_overhead"][key] - c["measured_overhead"])) for c in group]
        return f"{sum(p <= 5 for p in points)} of {len(points)} within 5 points"

    summary = {
        "fitted_on": args.fit,
        "best": best,
        "fit_rows": within([c for c in rows if c["model"] == args.fit], best),
        "held_out_at_zero": within(held_out, f"{grid[0] * 1e3:g} ms"),
        "held_out_after": within(held_out, best),
    }
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
