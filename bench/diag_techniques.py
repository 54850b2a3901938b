"""Diagnostic: each technique alone on the frontier models, measured and predicted side by side.

python bench/diag_techniques.py --out DIR [--models ...]  ->  DIR/diag_techniques.json

Per model (bf16-mixed, fused AdamW), hand-made plans: the unmodified step, the chunked loss,
checkpointing only the blocks' pointwise submodules (activations, norms), selective and full
checkpointing of every block, LeanAutocast, FusedGatedMLP (LLaMA), all lean techniques
together; for each, the measured peak reserved and median step time next to
``memfit.estimate``'s prediction of the same plan (--plans picks some by label).

The committed run (bench/results/diag_techniques_h200.json) also holds "chunked x8 (previous
code)": the chunked loss before its gradient took one pass over the logits, measured then.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from frontier import BLOCKS, OPTIMIZER, PRECISION, measure_plan  # noqa: E402
from memfit.techniques import SELECTIVE_SAVE_DEFAULT  # noqa: E402
from models import EXTERNAL  # noqa: E402

C = memfit.Checkpoint
POINTWISE = {
    "hf-gpt2": ("transformer.h.*.mlp.act",),
    "hf-gpt2-medium": ("transformer.h.*.mlp.act",),
    "hf-llama-1b": ("model.layers.*.input_layernorm", "model.layers.*.post_attention_layernorm"),
}


GATED = {"hf-llama-1b": ("model.layers.*.mlp",)}


def plans(name: str) -> dict:
    blocks, pointwise = (BLOCKS[name],), POINTWISE[name]
    chunked = memfit.ChunkedLoss(chunks=8)
    lean: list = [memfit.FusedGatedMLP(modules=GATED[name])] if name in GATED else []
    lean += [memfit.LeanAutocast(), C(modules=pointwise)]
    return {
        "unmodified": [],
        "chunked x8": [chunked],
        "chunked x4": [memfit.ChunkedLoss(chunks=4)],
        "pointwise ckpt": [C(modules=pointwise)],
        "pointwise ckpt + chunked x8": [C(modules=pointwise), chunked],
        "selective ckpt (mm saved)": [C(modules=blocks, save=SELECTIVE_SAVE_DEFAULT)],
        "full ckpt": [C(modules=blocks)],
        "lean autocast": [memfit.LeanAutocast()],
        **({"fused gated MLP": lean[:1]} if name in GATED else {}),
        "lean (all of the above)": lean,
        "lean + chunked x4": [*lean, memfit.ChunkedLoss(chunks=4)],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="hf-gpt2,hf-gpt2-medium,hf-llama-1b")
    parser.add_argument("--plans", help="comma-separated labels (default: all)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    device = memfit.get_device("cuda")
    for name in args.models.split(","):
        builder, spec, _, _ = EXTERNAL[name]
        for label, techniques in plans(name).items():
            if args.plans and label not in args.plans.split(","):
                continue
            row = {"model": name, "plan": label}
            try:
                predicted = memfit.estimate(
                    builder,
                    spec,
                    optimizer=OPTIMIZER,
                    precision=PRECISION,
                    device=device,
                    plan=techniques or None,
                )
                row["predicted"] = {
                    "peak_reserved": predicted.peak_reserved,
                    "step_s": predicted.step_time_s,
                }
                plan = memfit.Plan(techniques=tuple(techniques))
                row["measured"] = measure_plan(name, plan=plan if techniques else None)
            except Exception:
                row["error"] = traceback.format_exc()
            result["rows"].append(row)
            m, p = row.get("measured", {}), row.get("predicted", {})
            print(
                f"{name:15s} {label:30s} measured {m.get('peak_reserved', 0) / 2**30:6.2f} GiB "
                f"{m.get('step_s', 0) * 1e3:7.1f} ms | predicted "
                f"{p.get('peak_reserved', 0) / 2**30:6.2f} GiB "
                f"{(p.get('step_s') or 0) * 1e3:7.1f} ms"
                + (" ERROR " + row["error"][-300:] if "error" in row else ""),
                flush=True,
            )
            (out / "diag_techniques.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
