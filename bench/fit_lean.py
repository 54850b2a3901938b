"""The prices of LeanAutocast's hooks: per saved tensor and per recipe (``Calibration``'s
``lean_tensor_s`` and ``lean_recipe_s``).

python bench/fit_lean.py predict --out FILE [--model NAME]  (CPU: the predicted steps, unpriced)
python bench/fit_lean.py fit PROBE PREDICTED [--check]     (the two prices, least squares;
                                                            --check: the prices in force against
                                                            the probe's added times instead)

``predict`` traces bench/lean_scope_probe.py's configurations of a model (the Qwen2 shape) with
the hooks unpriced, then with 1 us a tensor, then 1 us a recipe: what the model charges without them
(the weight casts backward runs again are operators it prices already) and how many tensors and
recipes each configuration's hooks see. ``fit`` takes the probe's paired overheads (alternated
steps against the unmodified step: on that step, bound by the CPU, added step time is added
host time; the configurations' own step and host times, measured one after another, moved by
up to 30% on the same machine). The host constants are those of the machine the defaults were
fitted on, so the added time is first scaled by the unmodified step's predicted / measured host
time; then ``scaled added - priced added = tensors * lean_tensor_s + recipes * lean_recipe_s``
over the configurations that only add lean autocast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

NAME = "qwen2-shaped"
FITTED = ("lean autocast, whole model", "lean autocast, every block", "lean autocast, one block")


def predict(out: Path, name: str) -> None:
    import memfit.trace.step_phases as step_phases
    from lean_scope_probe import configurations
    from memfit.cost.calibration import Calibration
    from memfit.trace.estimate import trace_step
    from plans import MODELS, _settings, spec_of

    default = step_phases.load_calibration
    prices = {"none": {}, "tensors": {"lean_tensor_s": 1e-6}, "recipes": {"lean_recipe_s": 1e-6}}
    rows = {}
    try:
        for label, techniques in {"unmodified": [], **configurations(name)}.items():
            host = {}
            for kind, price in prices.items():
                priced = dataclasses.replace(
                    Calibration(), **{"lean_tensor_s": 0.0, "lean_recipe_s": 0.0, **price}
                )
                step_phases.load_calibration = lambda spec, c=priced: c
                traced = trace_step(lambda: MODELS[name][0](False), spec_of(name, False),
                                    plan=techniques, **_settings(name))  # fmt: skip
                host[kind] = traced.record.host_time_s()
                if kind == "none":
                    step_s = traced.record.step_time_s()
            rows[label] = {
                "step_s": step_s,
                "host_s": host["none"],
                "tensors": round((host["tensors"] - host["none"]) / 1e-6),
                "recipes": round((host["recipes"] - host["none"]) / 1e-6),
            }
            print(label, rows[label], flush=True)
    finally:
        step_phases.load_calibration = default
    out.write_text(json.dumps({"model": name, "rows": rows}, indent=1))


def fit(probe_path: Path, predicted_path: Path, check: bool = False) -> tuple[float, float]:
    probe = json.loads(probe_path.read_text())
    saved = json.loads(predicted_path.read_text())
    predicted, name = saved["rows"], saved["model"]
    measured = {k.split(" | ", 1)[1]: v for k, v in probe["rows"].items() if k.startswith(name)}
    unmodified = measured["unmodified"]["measured"]
    scale = predicted["unmodified"]["host_s"] / unmodified["host_s"]
    gpu = probe["environment"].get("gpu", "")
    predicted_host = predicted["unmodified"]["host_s"]
    print(f"{gpu}: unmodified step {unmodified['step_s'] * 1e3:.1f} ms, host "
          f"{unmodified['host_s'] * 1e3:.1f} ms measured, {predicted_host * 1e3:.1f} ms "
          f"predicted: times scaled by {scale:.2f}")  # fmt: skip
    counts, added = [], []
    for label in FITTED:
        row, guess = measured[label], predicted[label]
        extra = row["paired"]["overhead"] * unmodified["step_s"] * scale
        priced = guess["host_s"] - predicted["unmodified"]["host_s"]
        counts.append((guess["tensors"], guess["recipes"]))
        added.append(extra - priced)
        print(f"{label}: +{row['paired']['overhead']:.1%} paired, +{extra * 1e3:.2f} ms scaled, "
              f"+{priced * 1e3:.2f} ms priced without the hooks; {guess['tensors']} tensors, "
              f"{guess['recipes']} recipes")  # fmt: skip
    if check:
        from memfit.cost.calibration import Calibration

        tensor_s, recipe_s = Calibration().lean_tensor_s, Calibration().lean_recipe_s
    else:
        solution = np.linalg.lstsq(np.array(counts, dtype=float), np.array(added), rcond=None)[0]
        tensor_s, recipe_s = (max(0.0, float(x)) for x in solution)
    for label, (tensors, recipes), want in zip(FITTED, counts, added, strict=True):
        got = tensors * tensor_s + recipes * recipe_s
        print(f"  {label}: {got * 1e3:.2f} ms priced against {want * 1e3:.2f} ms")
    print(f"lean_tensor_s = {tensor_s * 1e6:.1f} us, lean_recipe_s = {recipe_s * 1e6:.1f} us")
    return tensor_s, recipe_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict")
    p.add_argument("--out", required=True)
    p.add_argument("--model", default=NAME)
    f = sub.add_parser("fit")
    f.add_argument("probe")
    f.add_argument("predicted")
    f.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.command == "predict":
        predict(Path(args.out), args.model)
    else:
        fit(Path(args.probe), Path(args.predicted), args.check)


if __name__ == "__main__":
    main()
