"""What the step-time model and the chunked loss need measured on a GPU, in one run.

python bench/costs.py --out DIR [--parts loss,matrix,micro] [--models a,b] [--smoke]
  ->  DIR/costs.json (DIR/costs_<parts>.json for some parts), written after every
      measurement: an interrupted run keeps what it measured

Parts (each in its own module):
  * loss (bench/cost_loss.py): causal-LM loss implementations side by side on the Qwen2-shaped
    model and LLaMA-1B: the whole step and the head + loss alone, with kernel profiles;
  * matrix (bench/cost_matrix.py): measured step times and per-operator profiles of fixed
    technique configurations on seven models, for fitting the step-time model per operator
    class on some and validating it on the others (bench/fit_costs.py, on a CPU);
  * micro (bench/cost_micro.py): launch and dispatch overhead, matmul efficiency by size,
    elementwise bandwidth, fused against unfused GELU, norms, attention, optimizer.

All bf16-mixed with fused AdamW, as the planner's benchmarks. --smoke runs the same code paths
on the CPU with tiny models and shapes (a test of the script, not a measurement).
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

import cost_loss  # noqa: E402
import cost_matrix  # noqa: E402
import cost_micro  # noqa: E402
from cost_harness import Harness, environment  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from models import CALIBRATION, CALIBRATION_LOSS  # noqa: E402

PARTS = ("loss", "matrix", "micro")
LOSS_MODELS = ("qwen2-shaped", "hf-llama-1b")
LANGUAGE_MODELS = {"hf-gpt2", "hf-llama-1b", "qwen2-shaped", "mistral-8l"}


def build(name: str, device: str, tiny: bool):
    builder, spec, tiny_spec = CALIBRATION[name]
    torch.manual_seed(0)
    with torch.device(device):
        model = builder(tiny)
    batch = make_inputs(parse_input_spec(tiny_spec if tiny else spec), device=device)
    return model.train(), batch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--models", default=",".join(CALIBRATION), help="for part matrix")
    parser.add_argument("--configs", help="matrix configurations to run, by label (default all)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS)) + sorted(
        set(args.models.split(",")) - set(CALIBRATION)
    )
    if unknown:
        parser.error(
            f"unknown parts or models {unknown}; parts: {PARTS}, models: {list(CALIBRATION)}"
        )
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; use --smoke to test the script on a CPU")
    harness = Harness(device, warmup=1 if args.smoke else 2, steps=1 if args.smoke else 5)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "costs" + ("" if set(parts) == set(PARTS) else "_" + "_".join(parts))
    path = args.out / f"{name}{'_smoke' if args.smoke else ''}.json"
    result: dict = {"environment": environment(), "smoke": args.smoke, "parts": {}, "errors": []}
    started = time.perf_counter()

    def recorder(part: str):
        def record(key: str, row: dict) -> None:
            row["at_s"] = round(time.perf_counter() - started, 2)
            result["parts"].setdefault(part, {})[key] = row
            path.write_text(json.dumps(result, indent=1))
            shown = row.get("measured") or row.get("step") or row
            brief = {k: v for k, v in shown.items() if isinstance(v, (int, float))}
            print(
                f"[{row['at_s']:7.1f} s] {part} | {key}: {'ERROR' if 'error' in row else brief}",
                flush=True,
            )

        return record

    if "micro" in parts:
        _guarded(result, "micro", lambda: cost_micro.run(harness, recorder("micro"), args.smoke))
    if "loss" in parts:
        for name in LOSS_MODELS:

            def loss_part(name: str = name) -> None:
                model, batch = build(name, device, args.smoke)
                cost_loss.run(harness, name, model, batch, recorder("loss"))

            _guarded(result, f"loss {name}", loss_part)
            harness.clean()
    if "matrix" in parts:
        only = set(args.configs.split(",")) if args.configs else None
        for name in args.models.split(","):

            def matrix_part(name: str = name) -> None:
                model, batch = build(name, device, args.smoke)
                loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
                lm = name in LANGUAGE_MODELS
                record = recorder("matrix")
                cost_matrix.run(harness, name, model, batch, lm, loss_fn, forward, record, only)

            _guarded(result, f"matrix {name}", matrix_part)
            harness.clean()
    result["total_s"] = time.perf_counter() - started
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path} in {result['total_s']:.0f} s; {len(result['errors'])} errors", flush=True)
    return result


def _guarded(result: dict, what: str, run) -> None:
    try:
        run()
    except Exception:
        result["errors"].append(f"{what}: {traceback.format_exc()[-3000:]}")
        print(f"ERROR in {what}:\n{result['errors'][-1]}", flush=True)


if __name__ == "__main__":
    main()
