"""What LeanAutocast's saved-tensor hooks cost the CPU, whole-model against one block's.

python bench/lean_scope_probe.py --out DIR [--models a,b] [--only "a;b"] [--pairs N] [--smoke]
    ->  DIR/lean_scope_probe.json (written after each configuration)

``memfit.step.lean_saving`` runs Python for every tensor autograd saves while ``LeanAutocast``
or ``FusedGatedMLP`` is in force. On a step the CPU bounds (the Qwen2 shape on an H100) that is
step time: plans run 1 of bench/measured_plans.py timed ``lean x1 + chunked loss x8`` at 125.3
ms against 103.3 for ``full ckpt x1 + chunked loss x8``. Per model and configuration: its
overhead over the unmodified step from alternated steps (bench/plans.py ``paired``: both
models resident, the order swapped each pair), its step and host time measured on their own,
and the tensors the hooks saw in one step (the price per tensor, ``lean_tensor_s``, is the
host time added over the tensors added). The chunked loss at 4 and 8 slices rides along.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit.step.lean_saving as lean  # noqa: E402
from cost_harness import Harness, environment  # noqa: E402
from memfit.step.undo import applied, undo_all  # noqa: E402
from memfit.structure.blocks import find_blocks  # noqa: E402
from memfit.techniques import (  # noqa: E402
    Checkpoint,
    ChunkedLoss,
    FusedGatedMLP,
    LeanAutocast,
)
from plans import MODELS, applied_step, measure, paired  # noqa: E402


def configurations(name: str, tiny: bool = False) -> dict[str, list]:
    """Lean autocast on the whole model, every block and the first block, and the chunked loss;
    for LLaMA-style models (Qwen2) also the planner's lean block with the chunked loss and
    full checkpointing of one block with it."""
    with torch.device("meta"):
        blocks = find_blocks(MODELS[name][0](tiny))
        has_head = hasattr(MODELS[name][0](tiny), "lm_head")
    first, every = blocks[0], tuple(blocks)
    found = {
        "lean autocast, whole model": [LeanAutocast()],
        "lean autocast, every block": [LeanAutocast(every)],
        "lean autocast, one block": [LeanAutocast((first,))],
    }
    if has_head:
        found.update({"chunked loss x4": [ChunkedLoss(4)], "chunked loss x8": [ChunkedLoss(8)]})
    if first.startswith("model.layers."):
        norms = (f"{first}.input_layernorm", f"{first}.post_attention_layernorm")
        lean_one = [FusedGatedMLP((f"{first}.mlp",)), LeanAutocast((first,)), Checkpoint(norms)]
        found["lean x1 + chunked loss x8"] = [*lean_one, ChunkedLoss(8)]
        found["full ckpt x1 + chunked loss x8"] = [Checkpoint((first,)), ChunkedLoss(8)]
    return found


def hooked_tensors(harness: Harness, name: str, techniques: list) -> int:
    """Tensors ``lean_saving``'s pack hook sees in one step of the configuration."""
    seen = [0]
    original = lean._pack

    def counting(state, saved):
        seen[0] += 1
        return original(state, saved)

    step, batch, model = applied_step(harness, name, techniques)
    lean._pack = counting
    try:
        step(batch)
    finally:
        lean._pack = original
        if applied(model):
            undo_all(model)
        del step, model, batch
        harness.clean()
    return seen[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="qwen2-shaped")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--only", default="", help="configuration labels, ';'-separated")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    harness = Harness("cpu" if args.smoke else "cuda")
    out = Path(args.out) / "lean_scope_probe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"environment": environment(), "pairs": args.pairs, "rows": {}, "errors": {}}
    for name in args.models.split(","):
        configs = {"unmodified": [], **configurations(name, args.smoke)}
        if args.only:
            wanted = {"unmodified", *args.only.split(";")}
            configs = {label: found for label, found in configs.items() if label in wanted}
        for label, techniques in configs.items():
            key = f"{name} | {label}"
            try:
                row = {"techniques": [repr(t) for t in techniques]}
                row["measured"] = measure(harness, name, techniques)
                row["hooked_tensors"] = hooked_tensors(harness, name, techniques)
                if techniques:
                    row["paired"] = paired(harness, name, techniques, args.pairs)
                row["at_s"] = round(time.perf_counter() - started, 1)
                result["rows"][key] = row
                measured = row["measured"]
                overhead = row.get("paired", {}).get("overhead")
                print(key, measured["step_s"], measured["host_s"], overhead, row["hooked_tensors"])
            except Exception:
                result["errors"][key] = traceback.format_exc()[-3000:]
                print(key, "failed", result["errors"][key][-300:], flush=True)
            result["total_s"] = round(time.perf_counter() - started, 1)
            out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
