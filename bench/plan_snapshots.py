"""Allocator recordings of measured plans, to replay memfit's simulation on their real order.

For each plan of a bench/plans.py result file (``--labels``, of ``--model``), on a CUDA GPU: the
model built, the plan applied as bench/plans.py applies it, four training steps, everything
recorded from an empty allocator (``torch.cuda.memory._record_memory_history``, no stacks).
Writes DIR/<model>_<label>_plan_snapshot.pickle.gz (the snapshot, with the run's own peaks under
"memfit_peaks" and the plan under "memfit_plan") and DIR/plan_snapshots.json. Made for
ResNet-50's checkpointed plans, measured 7-10% above their predicted reserved memory
(bench/results/plans_h200_run4.json.gz).

    python bench/plan_snapshots.py --out DIR [--results bench/results/plans_h200_run4.json.gz]
    python bench/plan_snapshots.py --out DIR --smoke   # a CPU: the tiny model, no recording
(not yet run on a GPU: the session that wrote it had no device time left)
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.structure.blocks import find_blocks  # noqa: E402
from plans import CALIBRATION_LOSS, build  # noqa: E402
from result_files import read_json  # noqa: E402

STEPS = 4


def plan_rows(results: Path, model: str, labels: list[str]) -> list[dict]:
    rows = read_json(results)["rows"]  # "<model> | <label>" -> row
    found = [rows.get(f"{model} | {label}", {}) for label in labels]
    return [row for row in found if "plan" in row]


def record(model_name: str, row: dict, out: Path, smoke: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not smoke
    device = "cuda" if cuda else "cpu"
    started = time.perf_counter()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.memory._record_memory_history(context=None, max_entries=2_000_000)
    model, batch = build(model_name, device, smoke)
    techniques = memfit.Plan.from_dict(row["plan"]).techniques
    if smoke:  # the plan names the full model's blocks: the tiny model checkpoints all of its own
        techniques = (memfit.Checkpoint(modules=tuple(find_blocks(model))),)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=cuda)
    loss_fn, forward = CALIBRATION_LOSS.get(model_name, (None, None))
    step = memfit.apply(
        list(techniques), model, optimizer, loss_fn=loss_fn, forward=forward,
        precision="bf16-mixed", device_type=device,
    )  # fmt: skip
    for _ in range(STEPS if cuda else 1):
        step(batch)
    result: dict[str, Any] = {"model": model_name, "label": row["label"], "budget": row["budget"]}
    if cuda:
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        peaks = {
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
        }
        snapshot["memfit_peaks"] = peaks
        snapshot["memfit_plan"] = row["plan"]
        label = row["label"].replace(" ", "-").replace("'", "")
        name = f"{model_name}_{label}_plan_snapshot"
        path = out / f"{name}_h200.pickle.gz"
        path.write_bytes(gzip.compress(pickle.dumps(snapshot)))
        result.update(file=path.name, **peaks)
    memfit.undo(model)
    del step, optimizer, model, batch
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--results", type=Path, default=Path("bench/results/plans_h200_run4.json.gz")
    )
    parser.add_argument("--model", default="tv-resnet50")
    parser.add_argument("--labels", default="activations x0.75,activations x0.5")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = plan_rows(args.results, args.model, args.labels.split(","))
    if not rows:
        raise SystemExit(f"no plans of {args.model} labelled {args.labels} in {args.results}")
    written = []
    for row in rows:
        try:
            written.append(record(args.model, row, args.out, args.smoke))
        except Exception as error:  # one failing plan must not lose the others
            written.append({"label": row["label"], "error": f"{type(error).__name__}: {error}"})
        print(json.dumps(written[-1]), flush=True)
        (args.out / "plan_snapshots.json").write_text(json.dumps(written, indent=1))


if __name__ == "__main__":
    main()
