"""The model-state techniques on a real GPU: exactness, torchao's kernels, predicted vs measured.

Run on the GPU machine (torchao from a carried wheel; without it the low-bit rows are skipped):
    python bench/optimizer_state.py --out DIR
On a CPU, the same code paths on tiny shapes (no memory readings):
    python bench/optimizer_state.py --out DIR --smoke

Three parts, written to DIR/optimizer_state.json:
  * exactness: OptimizerInBackward against the plain step, 3 steps of a small Hugging Face LLaMA
    in float32 (AdamW multi-tensor, AdamW fused, SGD with momentum): bitwise equal or not, and
    the largest difference;
  * kernels: one 4096 x 4096 float32 weight stepped by torchao's AdamW8bit/4bit/Fp8 through
    ``LowBitOptimizer``: the state's bytes (torch.cuda.memory_allocated across the first step,
    and the sum of its tensors' storages) and the steady step's temporaries (peak allocated
    over the step, minus what was allocated before it), each beside memfit's prediction
    (``memfit.trace.low_bit.STEP_TEMPORARIES``, read from inductor's CPU code);
  * steps: the LLaMA-1B of bench/frontier.py (batch 1 x 2048, bf16-mixed, every layer
    checkpointed) with each model-state plan: peak allocated and reserved (after 3 warm-up
    steps, over 4 steps) and the median step time, beside memfit.estimate's prediction.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.techniques import (  # noqa: E402
    Checkpoint,
    LowBitOptimizer,
    OptimizerInBackward,
    PureBF16,
)
from memfit.trace.estimate import trace_step  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from memfit.trace.low_bit import step_temporaries  # noqa: E402
from models import hf_llama  # noqa: E402

HAVE_TORCHAO = importlib.util.find_spec("torchao") is not None
LAYERS = Checkpoint(("model.layers.*",))
PLANS = {
    "adamw": [LAYERS],
    "adamw + in backward": [LAYERS, OptimizerInBackward()],
    "adamw 8bit": [LAYERS, LowBitOptimizer("8bit")],
    "adamw 8bit + in backward": [LAYERS, LowBitOptimizer("8bit"), OptimizerInBackward()],
    "pure bf16": [LAYERS, PureBF16()],
    "pure bf16 + in backward": [LAYERS, PureBF16(), OptimizerInBackward()],
    "pure bf16 + 8bit + in backward": [
        LAYERS,
        PureBF16(),
        LowBitOptimizer("8bit"),
        OptimizerInBackward(),
    ],
}


def small_llama(hidden: int, layers: int, vocab: int) -> nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=256,
        attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(config)


def clean(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def exactness(device: str) -> list[dict]:
    makers = {
        "adamw foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        "adamw fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
        "sgd momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
    }
    rows = []
    batch = make_inputs(parse_input_spec("input_ids=int64[2,64]<512 labels=int64[2,64]<512"))
    batch = {k: v.to(device) for k, v in batch.items()}
    for name, make in makers.items():
        weights = []
        for plan in ([], [OptimizerInBackward()]):
            torch.manual_seed(0)
            model = small_llama(128, 2, 512).to(device)
            step = memfit.apply(plan, model, make(model.parameters()), device_type=device)
            for _ in range(3):
                step(batch)
            weights.append([p.detach().clone() for p in model.parameters()])
        diff = max((a - b).abs().max().item() for a, b in zip(*weights, strict=True))
        equal = all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
        rows.append({"optimizer": name, "bitwise_equal": equal, "max_abs_diff": diff})
        print(f"exactness {name}: equal={equal} max diff {diff:.3g}", flush=True)
    return rows


def kernels(device: str, size: int) -> list[dict]:
    rows = []
    cuda = device == "cuda"
    for kind in ("8bit", "4bit", "fp8"):
        clean(cuda)
        layer = nn.Linear(size, size, bias=False).to(device)
        predicted = trace_step(
            nn.Linear(size, size, bias=False),
            torch.randn(2, size),
            precision="fp32",
            plan=[LowBitOptimizer(kind)],
            loss_fn=lambda out, b: out.mean(),
        ).profile.by_category[memfit.Category.OPTIMIZER]
        optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-3)
        memfit.apply([LowBitOptimizer(kind)], layer, optimizer, device_type=device)
        layer.weight.grad = torch.randn_like(layer.weight)
        before = torch.cuda.memory_allocated() if cuda else 0
        optimizer.step()  # compiles and creates the state
        state_allocated = torch.cuda.memory_allocated() - before if cuda else None
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        started = time.perf_counter()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        step_s = time.perf_counter() - started
        temporaries = torch.cuda.max_memory_allocated() - base if cuda else None
        moment = optimizer.state[layer.weight]["exp_avg"]
        storages = sum(
            getattr(t, name).untyped_storage().nbytes()
            for t in (moment, optimizer.state[layer.weight]["exp_avg_sq"])
            for name in t.__tensor_flatten__()[0]
        )
        expected = step_temporaries(layer.weight, moment, stochastic=False)
        row = {
            "kind": kind,
            "numel": layer.weight.numel(),
            "state_predicted": predicted,
            "state_allocated": state_allocated,
            "state_storages": storages,
            "temporaries_predicted": sum(-(-n // 512) * 512 for n in expected),
            "temporaries_measured": temporaries,
            "step_s": step_s,
        }
        rows.append(row)
        print(f"kernels {row}", flush=True)
        del optimizer, layer, moment
    return rows


def measure(builder, spec: str, plan: list, device: str, steps: int) -> dict:
    cuda = device == "cuda"
    clean(cuda)
    torch.manual_seed(0)
    with torch.device(device):
        model = builder()
    batch = {k: v.to(device) for k, v in make_inputs(parse_input_spec(spec)).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pure = any(isinstance(t, PureBF16) for t in plan)  # its own precision: bf16, no autocast
    precision = None if pure else "bf16-mixed"
    step = memfit.apply(plan, model, optimizer, precision=precision, device_type=device)
    for _ in range(3):
        step(batch)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step(batch)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    result = {
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
        "step_s": statistics.median(times),
    }
    del step, optimizer, model, batch
    clean(cuda)
    if cuda:  # what the row left behind (0 unless something keeps its model alive)
        result["allocated_after"] = torch.cuda.memory_allocated()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--plans", default=",".join(PLANS), help="names from PLANS")
    parser.add_argument("--parts", default="exactness,kernels,steps")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.smoke else "cuda"
    result: dict = {
        "gpu": None if args.smoke else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "torchao": None,
        "exactness": [],
        "kernels": [],
        "steps": {},
    }
    if HAVE_TORCHAO:
        import torchao

        result["torchao"] = torchao.__version__

    def save() -> None:
        (out / "optimizer_state.json").write_text(json.dumps(result, indent=2))

    started = time.perf_counter()
    parts = set(args.parts.split(","))
    if "exactness" in parts:
        result["exactness"] = exactness(device)
        save()
    if HAVE_TORCHAO and "kernels" in parts:
        result["kernels"] = kernels(device, 256 if args.smoke else 4096)
        save()
    if args.smoke:
        builder, spec, target = (
            lambda: small_llama(64, 2, 512),
            "input_ids=int64[1,32]<512 labels=int64[1,32]<512",
            "h100-80gb",
        )
    else:
        builder, spec, target = (
            hf_llama,
            "input_ids=int64[1,2048]<32000 labels=int64[1,2048]<32000",
            "h200",
        )
    for name in args.plans.split(",") if "steps" in parts else ():
        plan = PLANS[name]
        if not HAVE_TORCHAO and any(isinstance(t, LowBitOptimizer) for t in plan):
            result["steps"][name] = {"skipped": "torchao is not installed"}
            continue
        row: dict = {}
        try:
            profile = memfit.estimate(
                builder, spec, optimizer="adamw", precision="bf16-mixed", device=target, plan=plan
            )
            row["predicted"] = {
                "peak_allocated": profile.peak_allocated,
                "peak_reserved": profile.peak_reserved,
                "step_s": profile.step_time_s,
                "by_category": {k.value: v for k, v in profile.by_category.items()},
            }
            row["measured"] = measure(builder, spec, plan, device, 2 if args.smoke else 4)
            measured = row["measured"]["peak_reserved"]
            if measured:
                row["reserved_error"] = profile.peak_reserved / measured - 1
        except Exception as error:  # keep the other rows; the error is the result
            row["error"] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
        result["steps"][name] = row
        print(f"steps {name}: {row}", flush=True)
        save()
    result["wall_s"] = time.perf_counter() - started
    save()
    print(f"done in {result['wall_s']:.0f} s: {out / 'optimizer_state.json'}")


if __name__ == "__main__":
    main()
