"""memfit's plans against what users do today, on eight models, measured side by side.

python bench/plans.py --out DIR [--parts eager,ab,compile] [--models ...] [--plans-first] [--smoke]
  ->  DIR/plans.json (DIR/plans_<parts>.json for some parts), written after each measurement

For bench/frontier.py's models (Hugging Face GPT-2, GPT-2 medium, a LLaMA-style 1B) and five
more (a Qwen2-shaped LLM with a 151,936-token vocabulary, a Mistral-shaped GQA LLM of 8 layers,
BERT-base, ResNet-50, a 6-layer nn.TransformerEncoder), bf16-mixed, fused AdamW, in the order
given by --models (a run cut short keeps every row measured before: JSON after each):

* eager: budgets at 0.75, 0.5 and 0.3 of the predicted activations (over the predicted
  weights, gradients and optimizer state) and at memfit's predicted full-checkpointing memory;
  memfit.plan (the CPU-only path, run in a pool of CPU processes while the GPU measures) for
  each, then measured: the plan, the unmodified step, Hugging Face's
  gradient_checkpointing_enable() (memfit's full checkpointing of every block where the model
  has no such method: ResNet-50, nn.TransformerEncoder).
  Per budget: measured reserved against the budget, predicted against measured overhead, and
  the plan's time against the fastest alternative measured that fits the budget.
* ab: the chunked loss on the Qwen2-shaped model and LLaMA-1B against the unmodified step,
  steps alternated (both models in memory) so that host-side drift hits both alike.
* compile: for LLaMA-1B and GPT-2 at 0.5 of the activations,
  ``memfit.plan(..., compile=True)`` applied then compiled (first: does it keep to its
  budget?), then torch.compile alone and with ``activation_memory_budget`` 0.5 (compile times
  excluded: warm-up steps).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from cost_harness import Harness, environment, no_gc  # noqa: E402
from memfit.apply import applied, undo_all  # noqa: E402
from memfit.apply.expandable_segments import expandable_segments_on  # noqa: E402
from memfit.structure.blocks import find_blocks  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from models import CALIBRATION, CALIBRATION_LOSS, hf_gpt2_medium, lm_spec  # noqa: E402

MODELS = {
    **{k: CALIBRATION[k] for k in ("hf-gpt2", "hf-llama-1b", "qwen2-shaped", "mistral-8l")},
    "hf-gpt2-medium": (
        lambda tiny=False: CALIBRATION["hf-gpt2"][0](True) if tiny else hf_gpt2_medium(),
        CALIBRATION["hf-gpt2"][1],
        CALIBRATION["hf-gpt2"][2],
    ),
    **{k: CALIBRATION[k] for k in ("hf-bert-base", "tv-resnet50", "transformer-encoder")},
}
# --smoke: the tiny models with batches whose activations outweigh the device's fixed 64 MiB
# (cuBLAS workspaces), so that every budget gets a plan to apply and measure
SMOKE_SPECS = {
    "hf-gpt2": lm_spec(64, 64, 96),  # the tiny GPT-2 has 64 positions
    "hf-gpt2-medium": lm_spec(64, 64, 96),
    "hf-llama-1b": lm_spec(16, 512, 96),
    "qwen2-shaped": lm_spec(16, 512, 1024),
    "mistral-8l": lm_spec(16, 512, 512),
    "hf-bert-base": lm_spec(4, 256, 30522),
    "tv-resnet50": "float32[64,3,64,64] int64[64]<10",
    "transformer-encoder": "float32[64,256,32]",
}
FRACTIONS = (0.75, 0.5, 0.3)
# the device table's name of the GPU measured on (bench/pending_*.sh set it from nvidia-smi)
DEVICE = os.environ.get("MEMFIT_BENCH_DEVICE", "h200")
COMPILE_MODELS = ("hf-llama-1b", "hf-gpt2")  # LLaMA-1B first: its lean plans compiled exceeded


def _settings(name: str) -> dict:
    loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
    return dict(
        optimizer="adamw-fused",
        precision="bf16-mixed",
        device=DEVICE,
        **({"loss_fn": loss_fn, "forward": forward} if loss_fn else {}),
    )


def budgets_of(name: str, tiny: bool, compile: bool = False) -> dict:
    """A model's budgets, from its predicted steps (in a CPU worker process)."""
    builder, spec = MODELS[name][0], spec_of(name, tiny)
    settings = _settings(name)
    base = memfit.estimate(lambda: builder(tiny), spec, **settings)
    static = sum(
        base.by_category.get(c, 0)
        for c in (memfit.Category.PARAM, memfit.Category.OPTIMIZER, memfit.Category.OTHER)
    )
    budgets = {
        f"activations x{f}": int(static + f * (base.peak_reserved - static)) for f in FRACTIONS
    }
    if compile:
        return {"activations x0.5": budgets["activations x0.5"]}
    with torch.device("meta"):
        blocks = find_blocks(builder(tiny))
    checkpointed = [memfit.Checkpoint(modules=tuple(blocks))]
    full_peak = memfit.estimate(lambda: builder(tiny), spec, plan=checkpointed, **settings)
    budgets["full checkpointing's"] = full_peak.peak_reserved
    return budgets


def plan_for(name: str, tiny: bool, label: str, budget: int, compile: bool = False) -> dict:
    """memfit's plan for one budget (in a CPU worker process)."""
    builder, spec = MODELS[name][0], spec_of(name, tiny)
    settings = _settings(name)
    row: dict = {"label": label, "budget": budget}
    build = lambda: builder(tiny)  # noqa: E731
    row["predicted_unmodified_s"] = memfit.estimate(build, spec, **settings).step_time_s
    started = time.perf_counter()
    try:
        plan = memfit.plan(build, spec, budget=budget, compile=compile, **settings)
        row.update(plan=plan.to_dict(), predicted_s=plan.step_time_s)
    except memfit.MemfitError as error:
        row["error"] = str(error)
    row["plan_s"] = time.perf_counter() - started
    return row


def submit_plans(pool, names: list[str], tiny: bool, compile: bool = False) -> dict:
    """Every model's budgets, then every budget's plan, all in the pool; futures per model."""
    budgets = {name: pool.submit(budgets_of, name, tiny, compile) for name in names}
    plans: dict[str, list] = {}
    for name, future in budgets.items():
        found = future.result()
        plans[name] = [
            pool.submit(plan_for, name, tiny, label, budget, compile)
            for label, budget in found.items()
        ]
    return plans


def spec_of(name: str, tiny: bool) -> str:
    return SMOKE_SPECS[name] if tiny else MODELS[name][1]


def build(name: str, device: str, tiny: bool):
    torch.manual_seed(0)
    with torch.device(device):
        model = MODELS[name][0](tiny)
    return model.train(), make_inputs(parse_input_spec(spec_of(name, tiny)), device=device)


def applied_step(harness: Harness, name: str, techniques=(), hf_checkpointing=False):
    """A fresh model of ``name`` with ``techniques`` applied: (step, batch, model)."""
    model, batch = build(name, harness.device, harness.device == "cpu")
    if hf_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hf_checkpointing:  # torchvision: memfit's full checkpointing of every block stands in
        techniques = [memfit.Checkpoint(modules=tuple(find_blocks(model)))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=harness.cuda)
    loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
    step = memfit.apply(
        list(techniques), model, optimizer, loss_fn=loss_fn, forward=forward,
        precision="bf16-mixed", device_type=harness.device,
    )  # fmt: skip
    return step, batch, model


def measure(
    harness: Harness, name: str, techniques=(), hf_checkpointing=False, compile_budget=None
) -> dict:
    """One configuration of ``name`` on a fresh model: apply, (compile,) measure, release."""
    harness.clean()
    step, batch, model = applied_step(harness, name, techniques, hf_checkpointing)
    if compile_budget is not None:
        torch._dynamo.reset()
        torch._functorch.config.activation_memory_budget = compile_budget
        model.compile()
    try:
        measured = harness.measure(step, batch)
        if harness.cuda:  # what the allocator itself reports, with the plan in force
            measured["expandable_segments"] = expandable_segments_on()
        return measured
    finally:
        torch._functorch.config.activation_memory_budget = 1.0
        if applied(model):
            undo_all(model)
        del step, model, batch
        harness.clean()


def paired(harness: Harness, name: str, techniques, pairs: int) -> dict:
    """A plan's overhead from its steps alternated with the unmodified step's (both models
    resident, two warm-up pairs, the order swapped each pair), so that the host's drift hits
    both alike: in plans run 8 the Qwen2 shape's same plan measured 131.9 and 106.9 ms at two
    budgets, the unmodified step 104-124 ms within six steps."""
    harness.clean()
    configs = [applied_step(harness, name), applied_step(harness, name, techniques)]
    times: list[list[float]] = [[], []]
    try:
        with no_gc():
            for i in range(pairs + 2):
                for which in (0, 1) if i % 2 == 0 else (1, 0):
                    step, batch, _ = configs[which]
                    seconds = harness.seconds(lambda s=step, b=batch: s(b), repeats=1, warmup=0)
                    if i >= 2:
                        times[which].append(seconds)
    finally:
        for _, _, model in reversed(configs):
            if applied(model):
                undo_all(model)
        del configs
        harness.clean()
    median = [statistics.median(t) for t in times]
    return {
        "unmodified_s": times[0],
        "plan_s": times[1],
        "overhead": median[1] / median[0] - 1,
    }


def eager(
    harness: Harness, names: list[str], record, planned, plans_first: bool, pairs: int = 0
) -> None:
    futures = planned.result()
    if plans_first:  # no planning process competes with the measured steps' CPU time
        concurrent.futures.wait([f for model in futures.values() for f in model])
    for name in names:
        anchors, failed = {}, {}
        for anchor, hf in (("unmodified", False), ("hf full checkpointing", True)):
            try:
                anchors[anchor] = measure(harness, name, hf_checkpointing=hf)
            except Exception:  # recorded and shown: the other rows still measured
                failed[anchor] = traceback.format_exc()[-2000:]
        record(f"{name} | anchors", {**anchors, "failed": failed})
        for row in (f.result() for f in futures[name]):
            if "plan" in row:
                techniques = memfit.Plan.from_dict(row["plan"]).techniques
                try:
                    row["measured"] = measure(harness, name, techniques)
                except Exception:
                    row["measure_error"] = traceback.format_exc()[-2000:]
                try:
                    row["paired"] = paired(harness, name, techniques, pairs) if pairs else None
                except Exception:  # both models resident: may not fit where one does
                    row["paired_error"] = traceback.format_exc()[-2000:]
            row["summary"] = summarize(row, anchors, failed)
            record(f"{name} | {row['label']}", row)


def summarize(row: dict, anchors: dict, failed: dict | None = None) -> dict:
    """Against the budget and the alternatives measured that fit it; the alternatives that
    failed to run are named (``failed_alternatives``: the last line of their error), not
    dropped: the plan's "fastest" is among those measured."""
    budget = row["budget"]
    base = anchors.get("unmodified") or anchors.get("compiled")
    fitting = {k: a["step_s"] for k, a in anchors.items() if a["peak_reserved"] <= budget}
    found: dict = {"fitting_alternatives": fitting}
    if failed:
        found["failed_alternatives"] = {k: _last_line(v) for k, v in failed.items()}
    measured = row.get("measured")
    if measured is None:
        if "measure_error" in row:
            found["measure_error"] = _last_line(row["measure_error"])
        return found
    if base is None:
        return found
    found["violation"] = measured["peak_reserved"] > budget
    found["measured_overhead"] = measured["step_s"] / base["step_s"] - 1
    if row.get("predicted_s") and row.get("predicted_unmodified_s"):
        found["predicted_overhead"] = row["predicted_s"] / row["predicted_unmodified_s"] - 1
        found["overhead_error_points"] = 100 * (
            found["predicted_overhead"] - found["measured_overhead"]
        )
        if row.get("paired"):
            found["paired_overhead"] = row["paired"]["overhead"]
            found["paired_error_points"] = 100 * (
                found["predicted_overhead"] - found["paired_overhead"]
            )
    options = {**fitting, "memfit plan": measured["step_s"]} if not found["violation"] else fitting
    if options:
        fastest = min(options, key=options.get)
        found["fastest_fitting"] = fastest
        found["plan_vs_fastest"] = measured["step_s"] / options[fastest] - 1
    return found


def _last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else error[:300]


def ab(harness: Harness, record, pairs: int) -> None:
    """The chunked loss against the unmodified step, steps alternated on two copies."""
    for name in ("qwen2-shaped", "hf-llama-1b"):
        times = paired(harness, name, [memfit.ChunkedLoss(4)], pairs)
        row = {"unmodified_s": times["unmodified_s"], "chunked_s": times["plan_s"]}
        row.update(
            median_unmodified_s=statistics.median(times["unmodified_s"]),
            median_chunked_s=statistics.median(times["plan_s"]),
            overhead=times["overhead"],
        )
        record(f"{name} | unmodified vs chunked loss x4", row)


def compiled(harness: Harness, record, planned) -> None:
    """Every model's plan made with compile=True, applied then compiled, first (whether it keeps
    to its budget is the question); then torch.compile alone and with its own activation
    budget, model by model."""
    rows = {name: [f.result() for f in futures] for name, futures in planned.result().items()}
    for name, plan_rows in rows.items():
        for row in plan_rows:
            if "plan" in row:
                techniques = memfit.Plan.from_dict(row["plan"]).techniques
                try:
                    row["measured"] = measure(harness, name, techniques, compile_budget=1.0)
                except Exception:
                    row["measure_error"] = traceback.format_exc()[-2000:]
            record(f"{name} | compiled plan {row['label']}", row)
    for name, plan_rows in rows.items():
        anchors, failed = {}, {}
        for anchor, budget in (("compiled", 1.0), ("compiled, activation budget 0.5", 0.5)):
            try:
                anchors[anchor] = measure(harness, name, compile_budget=budget)
            except Exception:  # recorded and shown: the other rows still measured
                failed[anchor] = traceback.format_exc()[-2000:]
            record(f"{name} | compile anchors", {**anchors, "failed": failed})
        for row in plan_rows:
            row["summary"] = summarize(row, anchors, failed)
            record(f"{name} | compiled plan {row['label']}", row)


def _write(path: Path, result: dict) -> None:
    """Whole or not at all: a run killed while writing keeps the previous rows."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(result, indent=1))
    partial.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--parts", default="eager,ab")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument(
        "--workers", type=int, default=max(1, min(12, (os.cpu_count() or 2) - 4)),
        help="CPU processes that plan (default: leaves four cores to the measuring process)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument(
        "--plans-first", action="store_true",
        help="plan every budget before measuring anything: steps the CPU bounds measured "
        "while planning processes ran varied by up to 30%% between identical configurations",
    )  # fmt: skip
    parser.add_argument(
        "--pairs", type=int, default=0,
        help="also time each plan in alternation with the unmodified step, PAIRS pairs: its "
        "overhead with the host's drift cancelled (both models resident)",
    )  # fmt: skip
    args = parser.parse_args()
    parts, names = args.parts.split(","), args.models.split(",")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here; use --smoke to test the script on a CPU")
    harness = Harness(device, warmup=1 if args.smoke else 2, steps=1 if args.smoke else 6)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / (f"plans_{'_'.join(parts)}" + ("_smoke" if args.smoke else "") + ".json")
    result: dict = {
        "environment": environment(),
        "planned_for": DEVICE,
        "smoke": args.smoke,
        "rows": {},
        "errors": [],
    }
    started = time.perf_counter()

    def record(key: str, row: dict) -> None:
        row["at_s"] = round(time.perf_counter() - started, 1)
        result["rows"][key] = row
        _write(path, result)
        brief = row.get("summary") or {k: v for k, v in row.items() if isinstance(v, float)}
        print(f"[{row['at_s']:6.1f} s] {key}: {brief}", flush=True)

    runs = {
        "eager": lambda planned: eager(
            harness, names, record, planned["eager"], args.plans_first, args.pairs
        ),
        "ab": lambda planned: ab(harness, record, 2 if args.smoke else 15),
        "compile": lambda planned: compiled(harness, record, planned["compile"]),
    }
    unknown = [p for p in parts if p not in runs]
    if unknown:
        parser.error(f"unknown part(s) {unknown}; choose from {list(runs)}")
    context = multiprocessing.get_context("spawn")  # the workers never touch CUDA
    with (
        concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context) as pool,
        concurrent.futures.ThreadPoolExecutor(2) as submitting,
    ):
        # every part's plans go to the pool at once: the CPUs plan while the GPU measures
        planned = {}
        if "eager" in parts:
            planned["eager"] = submitting.submit(submit_plans, pool, names, args.smoke)
        if "compile" in parts:
            compiling = [n for n in COMPILE_MODELS if n in names]
            planned["compile"] = submitting.submit(submit_plans, pool, compiling, args.smoke, True)
        for part in parts:  # in the order given: a run cut short keeps the first ones
            try:
                runs[part](planned)
            except Exception:
                result["errors"].append(f"{part}: {traceback.format_exc()[-3000:]}")
                print(result["errors"][-1], flush=True)
    result["total_s"] = time.perf_counter() - started
    _write(path, result)
    print(f"wrote {path} in {result['total_s']:.0f} s; {len(result['errors'])} errors", flush=True)


if __name__ == "__main__":
    main()
