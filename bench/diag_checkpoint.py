"""Diagnostic: the recorded allocations and real allocator readings of HF GPT-2 with Hugging
Face's own full checkpointing, to compare the caching-allocator simulation with the GPU.

python bench/diag_checkpoint.py --out DIR  ->  DIR/diag_checkpoint.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from accuracy import compact  # noqa: E402
from memfit.measure.run import measure_step  # noqa: E402
from models import EXTERNAL, hf_gpt2  # noqa: E402


def hf_checkpointed():
    model = hf_gpt2()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    spec = EXTERNAL["hf-gpt2"][1]
    step = measure_step(hf_checkpointed, spec, optimizer="adamw-fused", precision="bf16-mixed")
    data = {
        "measured_allocated": step.profile.peak_allocated,
        "measured_reserved": step.profile.peak_reserved,
        "trace": compact(step.trace, step.marks),
        "readings": [(p.value, a, r, op, n) for p, a, r, op, n in step.readings],
    }
    with gzip.open(out / "diag_checkpoint.json.gz", "wt") as handle:
        json.dump(data, handle)
    print("peak allocated", step.profile.peak_allocated, "reserved", step.profile.peak_reserved)


if __name__ == "__main__":
    main()
