"""Plans against budgets on a real GPU, side by side with what users do today.

Run on the GPU machine:  python bench/frontier.py --out DIR [--models hf-gpt2,...]
  then:  python bench/frontier.py --out DIR2 --compile --plans-from DIR/frontier.json

For Hugging Face GPT-2 (bs 8, seq 1024), GPT-2 medium (bs 8, seq 1024) and a LLaMA-style 1B
(bs 4, seq 2048), bf16-mixed, fused AdamW, in one process per call:
  * anchors: the unmodified step; Hugging Face ``gradient_checkpointing_enable()`` (full
    checkpointing, non-reentrant); memfit's own full checkpointing of every block;
  * plans: ``memfit.plan`` (the CPU-only path, run here) at budgets from the unmodified peak down
    to below full checkpointing, each applied with ``memfit.apply`` and measured;
  * with --compile: torch.compile unmodified and with
    ``torch._functorch.config.activation_memory_budget`` (--compile-budgets), and with
    --plans-from, that eager run's plans (--plan-labels) applied and then compiled in place;
  * --allow limits the planner's techniques (e.g. without the lean ones, for compiled models).
Measured: peak reserved (``max_memory_reserved`` over 5 steps after 3 warm-up steps) and the
median step time (CUDA events). Writes DIR/frontier.json (frontier_compile.json with
--compile); prints a table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from models import EXTERNAL  # noqa: E402

GiB = 1024**3
MODELS = ["hf-gpt2", "hf-gpt2-medium", "hf-llama-1b"]
BLOCKS = {
    "hf-gpt2": "transformer.h.*",
    "hf-gpt2-medium": "transformer.h.*",
    "hf-llama-1b": "model.layers.*",
}
OPTIMIZER = "adamw-fused"
PRECISION = "bf16-mixed"


def clean() -> None:
    gc.collect()
    torch._C._cuda_clearCublasWorkspaces()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def run_steps(step, batch, warmup: int = 3, steps: int = 5) -> dict:
    for _ in range(warmup):
        step(batch)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(batch)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {
        "peak_reserved": torch.cuda.max_memory_reserved(),
        "peak_allocated": torch.cuda.max_memory_allocated(),
        "step_s": statistics.median(times),
    }


def build(name: str):
    builder, spec, _, _ = EXTERNAL[name]
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = builder()
        batch = make_inputs(parse_input_spec(spec), device="cuda")
    return model, batch


def measure_plan(
    name: str, plan=None, prepare=None, compiled_budget=None, snapshot: Path | None = None
) -> dict:
    clean()
    model, batch = build(name)
    if prepare is not None:
        prepare(model)
    target = model
    if compiled_budget is not None:
        torch._dynamo.reset()
        torch._functorch.config.activation_memory_budget = compiled_budget
        if plan is None:
            target = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = memfit.apply(plan or [], target, optimizer, precision=PRECISION)
    if plan is not None and compiled_budget is not None:
        model.compile()  # in place, with the plan's checkpoints and head already applied
    started = time.perf_counter()
    if snapshot is not None:  # every allocation from the first step on, for the simulator
        torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    result = run_steps(step, batch)
    result["wall_s"] = time.perf_counter() - started
    if snapshot is not None:
        torch.cuda.memory._dump_snapshot(str(snapshot))
        torch.cuda.memory._record_memory_history(enabled=None)
    del step, optimizer, model, target, batch
    torch._functorch.config.activation_memory_budget = 1.0
    clean()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--compile", action="store_true", help="torch.compile runs only")
    parser.add_argument("--fractions", default="0.75,0.5,0.3")
    parser.add_argument("--compile-budgets", default="1.0,0.5,0.2")
    parser.add_argument(
        "--plans-from",
        help="with --compile: also run these eager results' plans compiled (file from a run "
        "without --compile)",
    )
    parser.add_argument("--plan-labels", default="activations x0.5,full checkpointing's")
    parser.add_argument(
        "--allow", help="techniques the planner may use (memfit.plan's allow; default: all)"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name_of_file = "frontier_compile.json" if args.compile else "frontier.json"
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "precision": PRECISION,
        "optimizer": OPTIMIZER,
        "models": {},
        "errors": [],
    }
    device = memfit.get_device("cuda")
    for name in args.models.split(","):
        rows = result["models"].setdefault(name, {"anchors": {}, "plans": []})
        _, spec, _, _ = EXTERNAL[name]

        def save() -> None:
            (out / name_of_file).write_text(json.dumps(result, indent=1))

        try:
            if args.compile:
                for budget in (float(b) for b in args.compile_budgets.split(",")):
                    rows["anchors"][f"compile {budget}"] = measure_plan(
                        name, compiled_budget=budget
                    )
                    print(name, "compile", budget, rows["anchors"][f"compile {budget}"], flush=True)
                    save()
                if args.plans_from:
                    compile_plans(name, rows, args.plans_from, args.plan_labels.split(","), save)
                continue
            rows["anchors"]["unmodified"] = base = measure_plan(name)
            print(name, "unmodified", base, flush=True)

            def hf_full(model):
                model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )

            rows["anchors"]["hf full checkpointing"] = full = measure_plan(name, prepare=hf_full)
            print(name, "hf full", full, flush=True)
            every_block = memfit.Plan((memfit.Checkpoint(modules=(BLOCKS[name],)),))
            rows["anchors"]["memfit full checkpointing"] = measure_plan(name, plan=every_block)
            print(name, "memfit full", rows["anchors"]["memfit full checkpointing"], flush=True)
            save()
            builder = EXTERNAL[name][0]
            predicted = memfit.estimate(
                builder, spec, optimizer=OPTIMIZER, precision=PRECISION, device=device
            )
            static = sum(
                predicted.by_category[c]
                for c in (memfit.Category.PARAM, memfit.Category.OPTIMIZER, memfit.Category.OTHER)
            )
            activation = base["peak_reserved"] - static
            budgets = {
                f"activations x{f}": int(static + float(f) * activation)
                for f in args.fractions.split(",")
            }
            budgets["full checkpointing's"] = full["peak_reserved"]
            budgets["below full checkpointing"] = int(full["peak_reserved"] * 0.85)
            for label, budget in budgets.items():
                row = {"label": label, "budget": budget}
                started = time.perf_counter()
                try:
                    plan = memfit.plan(
                        builder,
                        spec,
                        budget=budget,
                        device=device,
                        optimizer=OPTIMIZER,
                        precision=PRECISION,
                        **({"allow": tuple(args.allow.split(","))} if args.allow else {}),
                    )
                except memfit.MemfitError as error:
                    row.update(error=str(error), plan_s=time.perf_counter() - started)
                    rows["plans"].append(row)
                    print(name, label, "infeasible:", str(error)[:120], flush=True)
                    save()
                    continue
                row.update(
                    plan=plan.label,
                    techniques=plan.to_dict()["techniques"],
                    plan_s=time.perf_counter() - started,
                    predicted_reserved=plan.profile.peak_reserved,
                    predicted_step_s=plan.step_time_s,
                    predicted_baseline_s=plan.baseline_step_time_s,
                )
                row["measured"] = measure_plan(name, plan=plan)
                row["violation"] = row["measured"]["peak_reserved"] > budget
                rows["plans"].append(row)
                print(
                    name,
                    label,
                    plan.label,
                    row["measured"],
                    "violation",
                    row["violation"],
                    flush=True,
                )
                save()
        except Exception:
            result["errors"].append(f"{name}: {traceback.format_exc()}")
            clean()
        save()
    summarize(result)
    (out / name_of_file).write_text(json.dumps(result, indent=1))


def compile_plans(name: str, rows: dict, source: str, labels: list[str], save) -> None:
    """The eager run's plans at ``labels``, compiled: apply, then ``model.compile()``."""
    eager = json.loads(Path(source).read_text())["models"].get(name, {})
    for row in eager.get("plans", []):
        if row["label"] not in labels or "techniques" not in row:
            continue
        plan = memfit.Plan.from_dict({"techniques": row["techniques"]})
        compiled = {key: row[key] for key in ("label", "budget", "plan")}
        try:
            compiled["measured"] = measure_plan(name, plan=plan, compiled_budget=1.0)
            compiled["violation"] = compiled["measured"]["peak_reserved"] > row["budget"]
        except Exception:
            compiled["error"] = traceback.format_exc()[-2000:]
            clean()
        rows["plans"].append(compiled)
        print(name, "compiled plan", row["label"], compiled.get("measured"), flush=True)
        save()


def summarize(result: dict) -> None:
    print(
        f"\n{'model':15s} {'what':34s} {'budget':>8s} {'reserved':>9s} {'step ms':>8s} {'vs':>7s}"
    )
    for name, rows in result["models"].items():
        base = rows["anchors"].get("unmodified")
        for label, m in rows["anchors"].items():
            ratio = m["step_s"] / base["step_s"] - 1 if base else 0
            print(
                f"{name:15s} {label:34s} {'':>8s} {m['peak_reserved'] / GiB:8.2f}G "
                f"{m['step_s'] * 1e3:8.1f} {ratio:+7.1%}"
            )
        for row in rows["plans"]:
            m = row.get("measured")
            if m is None:
                print(f"{name:15s} {row['label'][:34]:34s} {row['budget'] / GiB:7.2f}G infeasible")
                continue
            ratio = m["step_s"] / base["step_s"] - 1 if base else 0
            flag = " VIOLATION" if row["violation"] else ""
            print(
                f"{name:15s} {row['label'][:34]:34s} {row['budget'] / GiB:7.2f}G "
                f"{m['peak_reserved'] / GiB:8.2f}G {m['step_s'] * 1e3:8.1f} {ratio:+7.1%}{flag}"
            )
            print(f"{'':15s}   {row['plan'][:70]}")


if __name__ == "__main__":
    main()
