"""bench/host_phases_probe.py's measured CPU time per phase against the step-time model's.

python bench/host_phases_compare.py --phases FILE --out FILE [--device h100-80gb]

Each model of the probe is traced on this CPU at the probe's small batch (same rows, token ids
cut to the same length), with the default calibration, for the GPU named; the host time the
model predicts for each operator (``StepRecord.ops[i].host_s``, with what the step noted for it:
the per-step and per-micro-batch constants) is summed per phase and set beside the measured
phase: forward (the probe's ``pre`` + ``forward``: the step's own Python falls before the
model's forward), backward, optimizer (the steady step's), the rest (zero_grad). Operator counts
per phase come with it, so a per-operator price can be read off (measured / operators).
Predictions and counts, not measurements.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from host_phases_probe import TOKENS  # noqa: E402
from memfit.trace.estimate import StepTrace, trace_step  # noqa: E402
from models import CALIBRATION_LOSS  # noqa: E402
from plans import MODELS  # noqa: E402

CONFIGS = {"one row": (1, []), "two rows": (2, []), "two rows, micro-batch x2": (2, [2])}


def small_spec(spec: str, rows: int) -> str:
    """``spec`` with ``rows`` rows and token ids of TOKENS positions (as the probe cut them)."""

    def one(match: re.Match) -> str:
        dtype, dims = match.group(1), match.group(2).split(",")
        dims[0] = str(rows)
        if dtype == "int64" and len(dims) == 2:
            dims[1] = str(min(int(dims[1]), TOKENS))
        return f"{dtype}[{','.join(dims)}]"

    return re.sub(r"(\w+)\[([\d,]+)\]", one, spec)


def traced_small(name: str, rows: int, micro: list, device: str) -> StepTrace:
    """``name``'s step traced at the probe's small batch (micro-batched when ``micro`` says)."""
    loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trace_step(
            lambda: MODELS[name][0](False),
            small_spec(MODELS[name][1], rows),
            plan=[memfit.MicroBatch(micro[0])] if micro else None,
            loss_fn=loss_fn,
            forward=forward,
            optimizer="adamw-fused",
            precision="bf16-mixed",
            device=device,
        )


def predicted(name: str, rows: int, micro: list, device: str) -> dict:
    traced = traced_small(name, rows, micro, device)
    record = traced.record
    steady = "optimizer1" in record.marks
    host: Counter = Counter()
    ops: Counter = Counter()
    for op in record.ops:
        if steady and op.stage == "optimizer0":
            continue
        phase = "optimizer" if op.stage.startswith("optimizer") else op.stage
        phase = "forward" if op.recompute or phase == "setup" else phase
        host[phase] += op.host_s
        ops[phase] += 1
    return {"host_s": dict(host), "ops": dict(ops), "step_s": traced.profile.step_time_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default="h100-80gb")
    args = parser.parse_args()
    measured = json.loads(args.phases.read_text())
    rows = []
    for name, found in measured["rows"].items():
        for label, (batch_rows, micro) in CONFIGS.items():
            m = found.get(label, {})
            if "host" not in m:
                continue
            p = predicted(name, batch_rows, micro, args.device)
            phases = {
                "forward": m.get("pre", 0) + m.get("forward", 0),
                "backward": m.get("backward"),
                "optimizer": m.get("optimizer"),
                "post": m.get("post"),
            }
            row = {
                "model": name,
                "config": label,
                "measured_host_s": m["host"],
                "measured_gpu_s": m.get("gpu"),
                "predicted_host_s": sum(p["host_s"].values()),
                "predicted_step_s": p["step_s"],
                "phases": {
                    phase: {
                        "measured_s": phases[phase] if not micro else None,
                        "predicted_s": p["host_s"].get(
                            "zero_grad" if phase == "post" else phase, 0.0
                        ),
                        "ops": p["ops"].get("zero_grad" if phase == "post" else phase, 0),
                    }
                    for phase in phases
                },
            }
            rows.append(row)
            print(
                f"{name:20} {label:26} host measured {1e3 * m['host']:7.2f} ms, predicted "
                f"{1e3 * row['predicted_host_s']:7.2f}; "
                + ", ".join(
                    f"{k} {1e3 * (v['measured_s'] or 0):.2f}/{1e3 * v['predicted_s']:.2f}"
                    f" ({v['ops']} ops)"
                    for k, v in row["phases"].items()
                ),
                flush=True,
            )
    args.out.write_text(json.dumps({"device": args.device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
