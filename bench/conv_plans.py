"""ResNet-50's plans of bench/results/plans_h200.json.gz re-predicted without and with the cuDNN
convolution workspaces (memfit.trace.cuda.convolution), against what the H200 measured.

    python bench/conv_plans.py [--out bench/results]

For the unmodified step and each ResNet-50 plan the H200 ran (bf16-mixed, fused AdamW, batch
128 at 224x224), memfit.estimate with the plan, on this CPU, with the convolution rules removed
and with them; writes conv_plans.json. Re-predictions, no new measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
import memfit.trace.session as session  # noqa: E402
from conv_compare import _ORIGINAL_RULES, _without_conv  # noqa: E402
from memfit.plan.plan import Plan  # noqa: E402
from models import CALIBRATION, CALIBRATION_LOSS  # noqa: E402
from result_files import read_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "tv-resnet50"


def estimate(plan: Plan | None, conv: bool) -> dict[str, int]:
    builder, spec, _ = CALIBRATION[MODEL]
    loss_fn, forward = CALIBRATION_LOSS[MODEL]
    session.cuda_workspace_rules = _ORIGINAL_RULES if conv else _without_conv
    try:
        profile = memfit.estimate(
            lambda: builder(False),
            spec,
            loss_fn=loss_fn,
            forward=forward,
            optimizer="adamw-fused",
            precision="bf16-mixed",
            device="h200",
            plan=plan,
        )
    finally:
        session.cuda_workspace_rules = _ORIGINAL_RULES
    return {"allocated": profile.peak_allocated, "reserved": profile.peak_reserved}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    rows = read_json(RESULTS / "plans_h200.json.gz")["rows"]
    cases: list[tuple[str, Plan | None, dict[str, Any], int | None]] = [
        ("unmodified", None, rows[f"{MODEL} | anchors"]["unmodified"], None)
    ]
    for key, row in rows.items():
        if key.startswith(MODEL) and "plan" in row and "measured" in row:
            cases.append(
                (row["label"], Plan.from_dict(row["plan"]), row["measured"], row["budget"])
            )
    result = []
    for label, plan, measured, budget in cases:
        entry: dict[str, Any] = {"case": label, "budget": budget, "measured": measured}
        entry["plan"] = plan.label if plan is not None else None
        for name, conv in (("before", False), ("after", True)):
            entry[name] = estimate(plan, conv)
            for key in ("allocated", "reserved"):
                entry[f"{name}_{key}_error"] = entry[name][key] / measured[f"peak_{key}"] - 1
        result.append(entry)
        print(
            f"{label:24s} reserved measured {measured['peak_reserved'] / 2**30:.3f} GiB "
            f"(budget {(budget or 0) / 2**30:.3f}): predicted "
            f"{entry['before']['reserved'] / 2**30:.3f} -> {entry['after']['reserved'] / 2**30:.3f}"
            f"; allocated {entry['before_allocated_error']:+.2%} -> "
            f"{entry['after_allocated_error']:+.2%}",
            flush=True,
        )
    Path(args.out, "conv_plans.json").write_text(
        json.dumps({"model": MODEL, "rows": result}, indent=1)
    )


if __name__ == "__main__":
    main()
