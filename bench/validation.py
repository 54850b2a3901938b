"""The public validation zoo: memfit.estimate against real GPU steps on models a user brings.

Measure on the GPU machine (one call per group keeps each under the per-call limit):
    python bench/validation.py --measure --out DIR [--group llm] [--only name,name]
Predict on any machine (the CPU-only path, ``memfit.estimate(..., device="h200")``):
    python bench/validation.py --predict --out DIR
Compare (predicts first unless given --predictions):
    python bench/validation.py --compare bench/results/validation_h200.json [--predictions P]
The model code is part of what is measured: predict with the libraries of the measurement
(the committed comparison used its transformers 5.17; its header names both stacks).
Smoke test of every path at toy sizes (on a CPU the "measurement" runs real steps, no peaks):
    python bench/validation.py --smoke --measure --predict --out DIR

Measurements (training): ``memfit.measure.measure_step``, 3 warm-up steps then 2 measured, peak
allocated and reserved from PyTorch's counters. Inference: the model in ``eval()`` under
``torch.no_grad()`` or ``torch.inference_mode()``, 2 warm-up forwards then 2 measured. Caches are
emptied between configurations; a failing configuration is recorded and the run goes on.
Writes DIR/validation_<group>.json after every configuration (versions, GPU, rows) and appends
each measured trace and per-operator scratch memory to DIR/traces.jsonl.gz.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import gzip
import importlib.metadata
import json
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.errors import MemfitError  # noqa: E402
from memfit.measure.op_probe import OpProbe  # noqa: E402
from memfit.measure.run import measure_step  # noqa: E402
from memfit.step.batch import call_model  # noqa: E402
from memfit.step.precision import Precision  # noqa: E402
from memfit.step.train_step import TrainStep  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from memfit.trace.optimizers import make_optimizer  # noqa: E402
from validation_case import Case  # noqa: E402
from validation_compare import compare_files  # noqa: E402
from validation_extra import inference_cases, misc_cases  # noqa: E402
from validation_llm import llm_cases  # noqa: E402
from validation_models import encoder_cases, vision_cases  # noqa: E402

GROUPS = ("llm", "encoder", "vision", "misc", "inference")
# seconds on an H200 per group, builds and 5 steps per configuration (an estimate, before the
# first run)
EXPECTED_S = {"llm": 90, "encoder": 60, "vision": 90, "misc": 40, "inference": 40}
WATCHDOG_S = 60
MiB = 1 << 20


def all_cases() -> list[Case]:
    cases = llm_cases() + encoder_cases() + vision_cases() + misc_cases() + inference_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def select(groups: str, only: str) -> list[Case]:
    cases = all_cases()
    if groups:
        wanted = set(groups.split(","))
        unknown = wanted - set(GROUPS)
        if unknown:
            raise SystemExit(f"unknown group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}")
        cases = [c for c in cases if c.group in wanted]
    if only:
        wanted = set(only.split(","))
        unknown = wanted - {c.name for c in cases}
        if unknown:
            raise SystemExit(f"unknown configuration(s) {sorted(unknown)}; see --list")
        cases = [c for c in cases if c.name in wanted]
    return cases


def versions() -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version(), "machine": platform.node()}
    for package in ("torch", "transformers", "torchvision", "timm", "peft", "memfit"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    # the transformers actually imported (a --target overlay can shadow the installed one)
    with contextlib.suppress(ImportError):
        import transformers  # optional: the version actually imported

        found["transformers"] = transformers.__version__
    found["torch"] = torch.__version__
    if torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name()
        found["cuda"] = torch.version.cuda
        found["cudnn"] = torch.backends.cudnn.version()
        found["total_memory"] = torch.cuda.get_device_properties(0).total_memory
    return found


class Stalled(BaseException):
    """Raised by the watchdog: a BaseException, so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def watchdog(seconds: int, what: str) -> Iterator[None]:
    """Raise ``Stalled`` in the main thread after ``seconds`` (Python-level stalls only)."""

    def expire(signum: int, frame: Any) -> None:
        raise Stalled(f"{what} took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def clean() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def describe(case: Case, spec: str) -> dict[str, Any]:
    return {
        "name": case.name,
        "group": case.group,
        "arch": case.arch,
        "precision": case.precision,
        "optimizer": case.optimizer,
        "mode": case.mode,
        "batch": spec,
    }


# --- measurement --------------------------------------------------------------------------------
def measure_train(case: Case, builder: Any, spec: str, cuda: bool) -> tuple[dict, dict]:
    """Peak allocated/reserved of a steady training step (memfit's measurement path)."""
    if not cuda:
        return run_train_on_cpu(case, builder, spec), {}
    try:
        step = _measure_step(case, builder, spec)
    except Exception as error:  # memfit's recorded step failed: measure with plain torch
        clean()
        row = plain_train_peaks(case, builder, spec)
        row["recorded_step_error"] = f"{type(error).__name__}: {error}"[:1000]
        return row, {}
    row = {
        "measured_allocated": step.profile.peak_allocated,
        "measured_reserved": step.profile.peak_reserved,
        "outside_pytorch": step.profile.outside_pytorch_bytes,
    }
    diagnostics = {
        "marks": step.marks,
        "allocations": compact_allocations(step.trace),
        "ops": op_summary(step.op_costs),
    }
    return row, diagnostics


def _measure_step(case: Case, builder: Any, spec: str) -> Any:
    return measure_step(
        builder,
        spec,
        loss_fn=case.loss_fn(),
        forward=case.forward(),
        optimizer=case.optimizer_arg(),
        precision=case.precision,
        warmup=3,
        steps=2,
        op_probe=True,
    )


def run_train_on_cpu(case: Case, builder: Any, spec: str) -> dict:
    """The smoke test's stand-in without CUDA: real steps on the CPU, no peaks."""
    return {"cpu_losses": _train(case, builder, spec, "cpu", warmup=2, steps=0)}


def plain_train_peaks(case: Case, builder: Any, spec: str) -> dict:
    """Steady-state peaks of the training step with plain torch counters (no recorder)."""
    _train(case, builder, spec, "cuda", warmup=3, steps=2)
    return {
        "measured_allocated": torch.cuda.max_memory_allocated(),
        "measured_reserved": torch.cuda.max_memory_reserved(),
        "measure_path": "plain",
    }


def train_step_of(case: Case, builder: Any, spec: str, device: str) -> tuple[TrainStep, Any]:
    """The configuration's training step as the zoo runs it without a recorder, and its batch."""
    precision = Precision.parse(case.precision)
    with torch.device(device):
        module = builder()
    if precision.param_dtype is not None:
        module = module.to(precision.param_dtype)
    example = make_inputs(parse_input_spec(spec), device=device)
    optimizer = make_optimizer(
        case.optimizer_arg(), [p for p in module.parameters() if p.requires_grad]
    )
    step = TrainStep(
        module,
        optimizer,
        loss_fn=case.loss_fn(),
        forward=case.forward(),
        precision=precision,
        device_type=device,
    )
    return step, example


def _train(case: Case, builder: Any, spec: str, device: str, warmup: int, steps: int) -> list:
    step, example = train_step_of(case, builder, spec, device)
    losses = [float(step.step(example)) for _ in range(warmup)]
    if steps:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        losses += [float(step.step(example)) for _ in range(steps)]
        torch.cuda.synchronize()
    return losses


def inference_forward_of(case: Case, builder: Any, spec: str, device: str) -> Callable[[], None]:
    """One forward of the configuration in eval() under no_grad / inference_mode, the model
    built on ``device``."""
    precision = Precision.parse(case.precision)
    with torch.device(device):
        module = builder()
    module.eval()
    if precision.param_dtype is not None:
        module = module.to(precision.param_dtype)
    example = make_inputs(parse_input_spec(spec), device=device)
    grad_off = torch.inference_mode if case.mode == "inference_mode" else torch.no_grad

    def forward() -> None:
        autocast: Any = contextlib.nullcontext()
        if precision.autocast_dtype is not None:
            autocast = torch.autocast(device, dtype=precision.autocast_dtype)
        with grad_off(), autocast:
            output = call_model(module, example)
        del output

    return forward


def measure_inference(case: Case, builder: Any, spec: str, cuda: bool) -> tuple[dict, dict]:
    """Peak allocated/reserved of steady forwards in eval() under no_grad / inference_mode."""
    clean()
    forward = inference_forward_of(case, builder, spec, "cuda" if cuda else "cpu")
    for _ in range(2):
        forward()
    if not cuda:
        return {"cpu_forwards": 2}, {}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        forward()
    torch.cuda.synchronize()
    row = {
        "measured_allocated": torch.cuda.max_memory_allocated(),
        "measured_reserved": torch.cuda.max_memory_reserved(),
    }
    probe = OpProbe(lambda: "forward")
    with probe:
        forward()
    return row, {"ops": op_summary(probe.costs)}


def compact_allocations(trace: Any) -> list[tuple]:
    """The measured step's allocations of 1 MiB or more, for offline comparison."""
    return [
        (a.size, a.category.value, a.phase.value, a.module, a.op, list(a.shape), a.dtype)
        for a in trace.allocations.values()
        if a.size >= MiB
    ]


def op_summary(costs: list[Any]) -> dict[str, Any]:
    """How often each operator ran, and the calls whose scratch or hidden bytes reach 1 MiB."""
    counts: dict[str, int] = {}
    notable = []
    for cost in costs:
        counts[cost.op] = counts.get(cost.op, 0) + 1
        if cost.scratch >= MiB or abs(cost.hidden) >= MiB:
            notable.append((cost.phase, cost.op, cost.before, cost.after, cost.peak))
    return {"counts": counts, "notable": notable[:2000]}


def measure_all(cases: list[Case], out: Path, tiny: bool) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.init()
    header = {"kind": "measure", "tiny": tiny, "versions": versions()}
    if cuda:
        free, total = torch.cuda.mem_get_info()
        header["context_bytes"] = total - free
    results: dict[str, dict] = {}
    for case in cases:
        missing = case.missing()
        builder, spec = (None, "") if missing else case.built(tiny)
        row = describe(case, spec)
        started = time.perf_counter()
        try:
            if missing:
                raise ModuleNotFoundError(f"not installed: {', '.join(missing)}")
            clean()
            with watchdog(4 * WATCHDOG_S, f"measuring {case.name}"):
                measure = measure_train if case.mode == "train" else measure_inference
                values, diagnostics = measure(case, builder, spec, cuda)
            row.update(values, status="ok" if cuda else "cpu-only")
            if diagnostics:
                with gzip.open(out / "traces.jsonl.gz", "at") as handle:
                    handle.write(json.dumps({"name": case.name, **diagnostics}) + "\n")
        except (Exception, Stalled) as error:  # one configuration's failure is a row
            row.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000])
            row["traceback"] = traceback.format_exc()[-3000:]
        row["seconds"] = round(time.perf_counter() - started, 2)
        clean()
        group = results.setdefault(case.group, {**header, "group": case.group, "rows": []})
        group["rows"].append(row)
        (out / f"validation_{case.group}.json").write_text(json.dumps(group, indent=1))
        print(summary_line(row), flush=True)


def summary_line(row: dict) -> str:
    if row["status"] not in ("ok", "cpu-only"):
        return f"{row['name']:42s} {row['status']:8s} {row.get('error', '')[:200]}"
    if "measured_allocated" in row:
        figures = f"alloc {row['measured_allocated'] / 2**30:8.3f} GiB  reserved " + (
            f"{row['measured_reserved'] / 2**30:8.3f} GiB"
        )
    elif "predicted_allocated" in row:
        figures = f"alloc {row['predicted_allocated'] / 2**30:8.3f} GiB  reserved " + (
            f"{row['predicted_reserved'] / 2**30:8.3f} GiB  est {row['estimate_s']:.2f} s"
        )
    else:
        figures = "ran on the CPU (no peaks without CUDA)"
    return f"{row['name']:42s} ok       {figures}  ({row['seconds']:.1f} s)"


# --- prediction ---------------------------------------------------------------------------------
def predict_case(case: Case, tiny: bool, device: str) -> dict:
    """memfit.estimate of one configuration, within the watchdog; status ok/refused/hang/failed."""

    missing = case.missing()
    builder, spec = (None, "") if missing else case.built(tiny)
    row = describe(case, spec)
    options: dict[str, Any] = dict(
        loss_fn=case.loss_fn(),
        forward=case.forward(),
        optimizer=case.optimizer_arg(),
        precision=case.precision,
        device=device,
    )
    if case.mode != "train":
        options.update(mode="inference", optimizer=None)
    started = time.perf_counter()
    try:
        if missing:
            raise ModuleNotFoundError(f"not installed: {', '.join(missing)}")
        with watchdog(WATCHDOG_S, f"estimating {case.name}"):
            profile = memfit.estimate(builder, spec, **options)
        row.update(
            status="ok",
            predicted_allocated=profile.peak_allocated,
            predicted_reserved=profile.peak_reserved,
            warnings=list(profile.warnings),
        )
    except MemfitError as error:
        row.update(status="refused", error=f"{type(error).__name__}: {error}"[:2000])
    except Stalled as error:
        row.update(status="hang", error=str(error))
    except Exception as error:  # a crash of the estimator: a finding, recorded
        row.update(status="failed", error=f"{type(error).__name__}: {error}"[:2000])
        row["traceback"] = traceback.format_exc()[-3000:]
    row["estimate_s"] = row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def predict_all(cases: list[Case], out: Path, tiny: bool, device: str) -> Path:
    result = {"kind": "predict", "tiny": tiny, "device": device, "versions": versions()}
    result["rows"] = []
    path = out / "predictions.json"
    for case in cases:
        row = predict_case(case, tiny, device)
        result["rows"].append(row)
        path.write_text(json.dumps(result, indent=1))
        print(summary_line(row), flush=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", action="store_true", help="measure on this machine's GPU")
    parser.add_argument("--predict", action="store_true", help="predict with memfit.estimate")
    parser.add_argument("--compare", nargs="*", metavar="RESULTS", help="measured JSON file(s)")
    parser.add_argument("--predictions", help="a predictions.json to compare (else predict now)")
    parser.add_argument("--out", default="bench/results", help="directory for the JSON written")
    parser.add_argument("--group", default="", help=f"comma-separated: {', '.join(GROUPS)}")
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--device", default="h200", help="the device memfit.estimate models")
    parser.add_argument("--smoke", action="store_true", help="toy sizes of every configuration")
    parser.add_argument("--list", action="store_true", help="list the configurations")
    args = parser.parse_args()
    cases = select(args.group, args.only)
    if args.list:
        for case in cases:
            print(
                f"{case.group:10s} {case.name:42s} {case.arch:15s} {case.precision:11s} "
                f"{case.optimizer or '-':15s} {case.mode}"
            )
        archs = {c.arch for c in cases}
        print(f"{len(cases)} configurations, {len(archs)} architectures")
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.measure:
        measure_all(cases, out, args.smoke)
    predictions = args.predictions
    if args.predict or (args.compare is not None and not predictions):
        predictions = str(predict_all(cases, out, args.smoke, args.device))
    if args.compare is not None:
        compare_files(args.compare or [str(out)], predictions, out)


if __name__ == "__main__":
    main()
