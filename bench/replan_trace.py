"""Trace, on this CPU, every configuration bench/plans.py measured on the GPU (re-predictions).

python bench/replan_trace.py [--runs F,F] [--cache C] [--models a,b] [--smoke]

For each run of bench/plans.py (default: bench/results/plans_h200.json.gz and
plans_h200_run2.json.gz), every configuration it measured in eager mode: the unmodified step,
full checkpointing of every block (what Hugging Face's ``gradient_checkpointing_enable()``
does, memfit's ``Checkpoint`` standing in, as plans.py does for models without it), each plan
it applied, and the chunked loss of its A/B rows. Each is traced with memfit's tracer for an
H200 (bf16-mixed, fused AdamW, as measured), and every operator's class, work, phase, shape,
whether checkpointing recomputes it and what techniques noted for it is cached
(``fit_costs._arrays``, a pickle, not committed) with the constants it was priced with:
bench/replan_compare.py re-prices them with other constants without tracing again. These are
predictions made now for configurations measured before, not measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from fit_costs import H200, _arrays, noted  # noqa: E402 (installs the note recorder)
from memfit.cost import load_calibration  # noqa: E402
from memfit.structure.blocks import find_blocks  # noqa: E402
from memfit.trace.estimate import trace_step  # noqa: E402
from plans import MODELS, _settings, spec_of  # noqa: E402
from plans_table import _short_label  # noqa: E402
from result_files import read_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = ("plans_h200.json.gz", "plans_h200_run2.json.gz", "plans_h200_run3.json.gz")


def measured_configurations(path: Path) -> list[dict]:
    """Every eager configuration a plans.py run measured: model, label, techniques (as JSON),
    measured step time and reserved peak, and the budget for the plans."""
    rows = read_json(path)["rows"]
    found = []
    for key, row in rows.items():
        name, label = key.split(" | ", 1)
        if label == "anchors":
            for anchor in ("unmodified", "hf full checkpointing"):
                if anchor in row:
                    found.append(_configuration(name, anchor, anchor, row[anchor]))
        elif label.endswith("vs chunked loss x4"):  # the A/B rows: medians of alternated steps
            found.append(_configuration(name, "A/B unmodified", "unmodified",
                                        {"step_s": row["median_unmodified_s"]}))  # fmt: skip
            found.append(_configuration(name, "A/B chunked loss x4", "chunked loss x4",
                                        {"step_s": row["median_chunked_s"]}))  # fmt: skip
        elif "compiled" not in label and "measured" in row and "plan" in row:
            config = _configuration(name, label, row["plan"]["label"], row["measured"])
            config["short"] = _short_label(row["plan"])
            config.update(techniques=row["plan"]["techniques"], budget=row["budget"])
            config["predicted_then_s"] = row.get("predicted_s")
            config["predicted_unmodified_then_s"] = row.get("predicted_unmodified_s")
            found.append(config)
    for config in found:
        config["run"] = path.name
    return found


def _configuration(name: str, label: str, plan: str, measured: dict) -> dict:
    return {"model": name, "label": label, "plan": plan, "measured": measured}


def techniques_of(config: dict, tiny: bool) -> list:
    """The techniques of a configuration, rebuilt as memfit objects."""
    if config["plan"] == "unmodified":
        return []
    if config["plan"] == "hf full checkpointing":
        with torch.device("meta"):
            blocks = find_blocks(MODELS[config["model"]][0](tiny))
        return [memfit.Checkpoint(modules=tuple(blocks))]
    if config["plan"] == "chunked loss x4":
        return [memfit.ChunkedLoss(4)]
    return list(memfit.Plan.from_dict({"techniques": config["techniques"]}).techniques)


def trace_key(config: dict) -> str:
    return f"{config['model']} | {config['plan']} | {json.dumps(config.get('techniques'))}"


def trace_configuration(config: dict, tiny: bool) -> dict:
    """A configuration's traced operators (``fit_costs._arrays``) and its predicted step."""
    name = config["model"]
    builder = MODELS[name][0]
    noted.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = trace_step(
            lambda: builder(tiny),
            spec_of(name, tiny),
            plan=techniques_of(config, tiny),
            **{**_settings(name), "device": H200},
            timeout_s=600,  # a 2-core machine tracing micro-batched LLMs: not a stall
        )
    ops = _arrays(traced.record, noted[1:])
    steady = "optimizer1" in traced.record.marks  # the operators _arrays keeps
    ops["recompute"] = np.array(
        [op.recompute for op in traced.record.ops if not (steady and op.stage == "optimizer0")]
    )
    return {
        "calibration": dataclasses.asdict(load_calibration(H200)),  # what step_s was priced with
        "ops": ops,
        "step_s": traced.profile.step_time_s,
        "peak_reserved": traced.profile.peak_reserved,
        "micro_batches": traced.record.passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(str(RESULTS / r) for r in RUNS))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memfit_replan.pkl"))
    parser.add_argument("--models", help="only these")
    parser.add_argument("--smoke", action="store_true", help="the tiny models (a test)")
    args = parser.parse_args()
    done = pickle.loads(args.cache.read_bytes()) if args.cache.is_file() else {}
    only = set(args.models.split(",")) if args.models else None
    for run in args.runs.split(","):
        for config in measured_configurations(Path(run)):
            key = trace_key(config)
            if "ops" in done.get(key, {}) or (only and config["model"] not in only):
                continue
            started = time.perf_counter()
            try:
                done[key] = trace_configuration(config, args.smoke)
            except Exception as error:  # one configuration failing is recorded, not dropped
                done[key] = {"error": f"{type(error).__name__}: {error}"[:2000]}
            args.cache.write_bytes(pickle.dumps(done))
            what = done[key].get("error") or f"{len(done[key]['ops']['kind'])} ops"
            print(f"{key[:100]}: {what} in {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
