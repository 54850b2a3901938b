"""The plans of a bench/plans.py run predicted again with the calibration ``memfit calibrate``
gives on the machine that measured them (CPU only: predictions against the run's measurements).

python bench/repredict_calibrated.py --plans FILE --calibrate FILE --out FILE

``--calibrate`` is the output of ``memfit calibrate --dry-run --format json`` on that machine
(bench/pending_gpu.sh records it before the plans). Each measured plan and its model's
unmodified step are predicted twice in this process, with the defaults (what the run's planner
used) and with the calibration of those microbenchmarks (``memfit.measure.calibrate``), and both
predicted overheads are set against the measured one, and the paired one where the run has it
(``--pairs``). The plans stay those the run chose: this asks whether the calibration prices them
better, not what it would have chosen. With ``--host-fit`` (bench/fit_host_phases.py's result)
the defaults with its host constants are predicted too, as they are and calibrated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

from result_files import read_json


def first_json(text: str) -> dict:
    """The first JSON object in ``text`` (a log holding several, then an exit line)."""
    return json.JSONDecoder().raw_decode(text[text.index("{") :])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", required=True, type=Path, help="a bench/plans.py result")
    parser.add_argument("--calibrate", required=True, type=Path, help="memfit calibrate's JSON")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--host-fit", type=Path, default=None,
        help="bench/fit_host_phases.py's result: also predict with its host constants",
    )  # fmt: skip
    args = parser.parse_args()
    run = read_json(args.plans)
    os.environ["MEMFIT_BENCH_DEVICE"] = run["planned_for"]
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import memfit
    from fit_offload import calibration_as
    from memfit.cost import Calibration
    from memfit.devices import get_device
    from memfit.measure.calibrate import REFERENCE, Microbenchmarks, calibration_from
    from plans import MODELS, _settings, spec_of

    measured = Microbenchmarks(**first_json(args.calibrate.read_text())["measured"])
    spec = get_device(measured.device)
    variants = {"default": Calibration(), "calibrated": calibration_from(measured, spec)}
    if args.host_fit:
        refit = dataclasses.replace(
            Calibration(), **json.loads(args.host_fit.read_text())["at_reference"]
        )
        variants["refit"] = refit
        variants["refit calibrated"] = calibration_from(measured, spec, defaults=refit)

    def predicted(name: str, techniques: list) -> dict:
        builder, spec = MODELS[name][0], spec_of(name, False)
        found = {}
        for which, calibration in variants.items():
            with calibration_as(lambda c, v=calibration: v):
                profile = memfit.estimate(
                    lambda: builder(False), spec, plan=techniques, **_settings(name)
                )
            found[which] = profile.step_time_s
        return found

    rows, bases = [], {}
    for key, row in run["rows"].items():
        summary = row.get("summary", {})
        if "measured_overhead" not in summary:
            continue
        name = key.split(" | ")[0]
        if name not in bases:
            bases[name] = predicted(name, [])
        plan = predicted(name, list(memfit.Plan.from_dict(row["plan"]).techniques))
        found = {"key": key, "plan": row["plan"]["label"]}
        for which in variants:
            overhead = plan[which] / bases[name][which] - 1
            found[which] = {
                "predicted_s": plan[which],
                "predicted_unmodified_s": bases[name][which],
                "error_points": 100 * (overhead - summary["measured_overhead"]),
            }
            if "paired_overhead" in summary:
                found[which]["paired_error_points"] = 100 * (overhead - summary["paired_overhead"])
        rows.append(found)
        print(json.dumps(found), flush=True)

    def within(which: str, field: str) -> str | None:
        errors = [abs(r[which][field]) for r in rows if field in r[which]]
        if not errors:
            return None
        return (
            f"{sum(e <= 5 for e in errors)} of {len(errors)} within 5 points "
            f"(median {statistics.median(errors):.1f})"
        )

    summary = {
        "microbenchmarks": measured.__dict__,
        "host_scale": measured.kernel_s / REFERENCE.kernel_s,
        "calibration": {
            which: {
                k: getattr(c, k) for k in ("matmul_efficiency", "kernel_s", "host_forward_op_s")
            }
            for which, c in variants.items()
        },
        **{
            f"{which} vs {field}": within(which, field)
            for which in variants
            for field in ("error_points", "paired_error_points")
        },
    }
    args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
