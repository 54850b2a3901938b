"""The budgets of plans run 8 (H100) planned again on this CPU, with offloaded tensors priced as
the calibration now prices them and unpriced (``offload_tensor_s`` 0, the code run 8 ran).

python bench/replan_run8.py --out FILE [--price-ms X]   (one JSON line per budget)

bench/results/replan_run8_{priced,unpriced}.jsonl ran with transformers 5.25 (run 8's machine
has 5.17; the Hugging Face models' plans may differ by it, not by the price). Predictions, not
measurements; where run 8 or its ladder probe measured the configuration a
plan now picks (bench/results/plans_h100_run8.json.gz, ladder_probe_h100.json), compare there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MEMFIT_BENCH_DEVICE", "h100-80gb")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fit_offload import offload_priced  # noqa: E402
from plans import plan_for  # noqa: E402
from result_files import read_json  # noqa: E402

RUN8 = Path(__file__).resolve().parent / "results" / "plans_h100_run8.json.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--price-ms", type=float, default=None, help="default: the calibration's")
    args = parser.parse_args()
    price = (
        contextlib.nullcontext() if args.price_ms is None else offload_priced(args.price_ms / 1e3)
    )
    rows = read_json(RUN8)["rows"]
    with price, args.out.open("w") as out:
        for key, row in rows.items():
            if "budget" not in row:
                continue
            name, label = key.split(" | ")
            found = plan_for(name, False, label, row["budget"])
            chosen = [f for f in found.get("plan", {}).get("frontier", []) if f.get("chosen")]
            line = {
                "key": key,
                "price_ms": args.price_ms,
                "plan": chosen[0]["label"] if chosen else found.get("error", "?")[:200],
                "predicted_s": found.get("predicted_s"),
                "run8_plan": next(
                    (
                        f["label"]
                        for f in row.get("plan", {}).get("frontier", [])
                        if f.get("chosen")
                    ),
                    None,
                ),
                "plan_s": found["plan_s"],
            }
            out.write(json.dumps(line) + "\n")
            out.flush()
            print(line, flush=True)


if __name__ == "__main__":
    main()
