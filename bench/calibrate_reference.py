"""The reference microbenchmarks of ``memfit calibrate`` (memfit.measure.calibrate.REFERENCE).

Run on the GPU the cost model's defaults were fitted on (an H200):
python bench/calibrate_reference.py --out DIR  ->  DIR/calibrate_h200.json (three repeats)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from memfit.devices import local_device  # noqa: E402
from memfit.measure.calibrate import run_microbenchmarks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    spec = local_device()
    runs = [
        dataclasses.asdict(run_microbenchmarks(spec, progress=lambda _: None)) for _ in range(3)
    ]
    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "device": spec.name,
        "datasheet": {"bf16_flops": spec.bf16_flops, "bandwidth_bytes_s": spec.bandwidth_bytes_s},
        "runs": runs,
    }
    (out / f"calibrate_{spec.name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
