"""Diagnostic: a memory snapshot (no stacks) of HF GPT-2 with Hugging Face full checkpointing,
from an empty allocator through 4 steps, to replay through memfit's allocator simulation.

python bench/diag_snapshot.py --out DIR  ->  DIR/hf_gpt2_ckpt_snapshot.pickle
(committed as tests/trace/fixtures/hf_gpt2_ckpt_snapshot_h200.pickle)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from models import EXTERNAL, hf_gpt2  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    torch.cuda.memory._record_memory_history(max_entries=10_000_000, context=None)
    with torch.device("cuda"):
        model = hf_gpt2()
        batch = make_inputs(parse_input_spec(EXTERNAL["hf-gpt2"][1]), device="cuda")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = memfit.apply([], model, optimizer, precision="bf16-mixed")
    for _ in range(4):
        step(batch)
    torch.cuda.synchronize()
    torch.cuda.memory._dump_snapshot(str(out / "hf_gpt2_ckpt_snapshot.pickle"))
    torch.cuda.memory._record_memory_history(enabled=None)
    print("peak", torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())


if __name__ == "__main__":
    main()
