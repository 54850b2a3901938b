"""Fit the step-time model's host constants per phase to bench/host_phases_probe.py's
measurements, on some models, and check them on the others (CPU: traces against measurements).

python bench/fit_host_phases.py --phases FILE --calibrate FILE --out FILE [--train a,b,...]

Each model is traced at the probe's small batches (one and two rows; bench/host_phases_compare.py)
and what every host constant multiplies is counted per phase (fit_costs.py's arrays: operators
with a kernel, views, optimizer tensors, what the step noted). Then per phase, by non-negative
least squares on the relative error of the ``--train`` models' measured phase times:

* forward (the probe's ``pre`` + ``forward``): ``host_forward_op_s`` per operator,
  ``module_call_s`` per module call, ``forward_backward_s`` per forward;
* backward: ``host_backward_op_s`` per operator;
* optimizer: ``optimizer_step_s`` per step, ``host_tensor_s`` per tensor the update takes
  (fused AdamW issues two operators whatever the model, so a per-operator price cannot be told
  from a per-step one; the tensors can).

The fit is of the machine measured; ``--calibrate`` (memfit calibrate's microbenchmarks there)
scales it back to the reference machine the defaults describe, as ``memfit calibrate`` scales
the defaults forward (``memfit.measure.calibrate``: host constants with the time per kernel of a
chain). The other models are the check, and the two-row micro-batch x2 configurations (never
fitted) what a second micro-batch costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fit_costs  # noqa: E402  (importing it makes the tracer report what each operator noted)
from host_phases_compare import CONFIGS, traced_small  # noqa: E402
from memfit.cost.classes import CLASSES  # noqa: E402
from memfit.measure.calibrate import REFERENCE, Microbenchmarks  # noqa: E402
from repredict_calibrated import first_json  # noqa: E402

FIELDS = {
    "forward": ("host_forward_op_s", "module_call_s", "forward_backward_s"),
    "backward": ("host_backward_op_s",),
    "optimizer": ("optimizer_step_s", "host_tensor_s"),
}
TRAIN = ("hf-gpt2", "hf-llama-1b", "hf-bert-base", "tv-resnet50")  # as bench/fit_costs.py


def counts(name: str, rows: int, micro: list, device: str) -> dict:
    """What each fitted constant multiplies, per phase, in ``name``'s traced step."""
    fit_costs.noted.clear()
    traced = traced_small(name, rows, micro, device)
    a = fit_costs._arrays(traced.record, fit_costs.noted[1:])
    kernel = a["kind"] != CLASSES.index("none")
    stage = a["stage"]
    return {
        "forward": [
            np.sum((stage == 0) & kernel),
            a["noted_module_call"][stage == 0].sum(),
            a["noted_forward_backward"].sum(),
        ],
        "backward": [np.sum((stage == 1) & kernel)],
        "optimizer": [a["noted_optimizer_step"].sum(), a["tensors"].sum()],
    }


def measured_phases(m: dict) -> dict:
    return {
        "forward": m["pre"] + m["forward"],
        "backward": m["backward"],
        "optimizer": m["optimizer"],
    }


def main() -> None:
    from scipy.optimize import nnls

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", required=True, type=Path)
    parser.add_argument("--calibrate", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--train", default=",".join(TRAIN))
    args = parser.parse_args()
    train = set(args.train.split(","))
    probe = json.loads(args.phases.read_text())
    machine = Microbenchmarks(**first_json(args.calibrate.read_text())["measured"])
    to_reference = REFERENCE.kernel_s / machine.kernel_s
    cases = []
    for name, found in probe["rows"].items():
        for label, (rows, micro) in CONFIGS.items():
            if "host" not in found.get(label, {}):
                continue
            cases.append(
                {
                    "model": name,
                    "config": label,
                    "measured": found[label],
                    "counts": counts(name, rows, micro, machine.device),
                }
            )
            print(name, label, cases[-1]["counts"], flush=True)
    fitted: dict[str, float] = {}
    for phase, fields in FIELDS.items():
        fit_on = [c for c in cases if c["model"] in train and "micro" not in c["config"]]
        x = np.array([c["counts"][phase] for c in fit_on], dtype=float)
        y = np.array([measured_phases(c["measured"])[phase] for c in fit_on])
        values, _ = nnls(x / y[:, None], np.ones(len(y)))
        fitted.update(zip(fields, values.tolist(), strict=True))
    rows = []
    for c in cases:
        predicted = {
            phase: float(np.dot(c["counts"][phase], [fitted[f] for f in fields]))
            for phase, fields in FIELDS.items()
        }
        measured = measured_phases(c["measured"]) if "micro" not in c["config"] else {}
        rows.append(
            {
                "model": c["model"],
                "config": c["config"],
                "set": "train" if c["model"] in train else "held out",
                "counts": {k: [float(v) for v in vs] for k, vs in c["counts"].items()},
                "measured_s": measured,
                "measured_host_s": c["measured"]["host"],
                "predicted_s": predicted,
                "predicted_host_s": sum(predicted.values()),
            }
        )
        r = rows[-1]
        print(
            f"{r['model']:20} {r['config']:26} {r['set']:9} host {1e3 * r['measured_host_s']:6.2f}"
            f" / {1e3 * r['predicted_host_s']:6.2f} ms; "
            + ", ".join(
                f"{p} {1e3 * measured.get(p, float('nan')):.2f}/{1e3 * predicted[p]:.2f}"
                for p in FIELDS
            )
        )
    result = {
        "machine": machine.__dict__,
        "fitted_here": fitted,
        "at_reference": {k: v * to_reference for k, v in fitted.items()},
        "train": sorted(train),
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("fitted_here", "at_reference")}, indent=1))


if __name__ == "__main__":
    main()
