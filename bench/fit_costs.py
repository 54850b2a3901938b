"""Fit the step-time model to bench/costs.py's measurements, and validate it on other models.

python bench/fit_costs.py trace [--results F] [--cache C]   traces every measured configuration
python bench/fit_costs.py fit [--cache C] [--out F]          fits, validates, writes F

trace: each configuration of the measured design matrix (bench/cost_matrix.configs), traced
on this CPU with memfit's tracer for an H200 (bf16-mixed, fused AdamW, as measured); every
operator's class, work, phase and shape is cached (a pickle, not committed).
fit: the calibration's constants on the training models only (GPT-2, LLaMA-1B, BERT-base,
ResNet-50): the device side by least squares on the log of predicted over measured GPU time of
each ATen operator name the profiler saw as often as the trace (time-weighted), the host side
by non-negative least squares on the relative error of each step's host time (the CPU time to
issue it) over what each host constant multiplies (operators per phase, optimizer tensors,
training-step calls, module calls, checkpoint regions, selective-checkpoint decisions). Then
every configuration is predicted with them (the timeline of memfit.cost), the held-out models
(the Qwen2-shaped and Mistral-shaped LLMs, nn.TransformerEncoder) reported apart. Writes the
constants, the per-configuration predictions and the errors
(bench/results/fit_costs_h200.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from cost_matrix import configs  # noqa: E402
from memfit.cost import Calibration  # noqa: E402
from memfit.cost.classes import CLASSES  # noqa: E402
from memfit.cost.device import _BANDWIDTH_CLASS, _unaligned, wave_efficiency  # noqa: E402
from memfit.devices import get_device  # noqa: E402
from memfit.trace import session  # noqa: E402
from memfit.trace.estimate import trace_step  # noqa: E402
from models import CALIBRATION, CALIBRATION_LOSS  # noqa: E402
from result_files import read_json  # noqa: E402

TRAIN = ("hf-gpt2", "hf-llama-1b", "hf-bert-base", "tv-resnet50")
HELD_OUT = ("qwen2-shaped", "mistral-8l", "transformer-encoder")
LANGUAGE_MODELS = {"hf-gpt2", "hf-llama-1b", "qwen2-shaped", "mistral-8l"}
KINDS = CLASSES
H200 = get_device("h200")
DEVICE_FIELDS = ("matmul_efficiency", "unaligned_matmul_factor", "attention_efficiency",
                 "attention_backward_efficiency", "conv_efficiency", "bandwidth_efficiency",
                 "copy_efficiency", "reduction_efficiency", "norm_efficiency",
                 "batch_norm_efficiency", "optimizer_efficiency", "kernel_s")  # fmt: skip
# optimizer_step (noted once a step) and host_optimizer_op_s are one column while every
# measured step runs fused AdamW (two operators): a matrix with another optimizer separates them
NOTED = (
    "forward_backward",
    "module_call",
    "checkpoint_region",
    "checkpoint_op",
    "selective_op",
    "optimizer_step",
    "offload_tensor",
)
# the columns of _host_features, in order: per operator by phase, per view, per optimizer
# tensor, then per note
HOST_FIELDS = (
    "host_forward_op_s", "host_backward_op_s", "host_optimizer_op_s", "host_view_op_s",
    "host_tensor_s", *(f"{kind}_s" for kind in NOTED),
)  # fmt: skip


def trace_all(results: Path, cache: Path, only: set[str] | None) -> None:
    measured = read_json(results)["parts"]["matrix"]
    done = pickle.loads(cache.read_bytes()) if cache.is_file() else {}
    for key, row in measured.items():
        name, label = key.split(" | ")
        if key in done or "measured" not in row or (only and name not in only):
            continue
        builder, spec, _ = CALIBRATION[name]
        with torch.device("meta"):
            structure = builder(False)
        batch = int(spec.split("[")[1].split(",")[0].rstrip("]"))
        techniques = configs(structure, batch, name in LANGUAGE_MODELS).get(label)
        if techniques is None:
            continue
        loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
        started = time.perf_counter()
        noted.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = trace_step(
                lambda b=builder: b(False),
                spec,
                plan=techniques,
                loss_fn=loss_fn,
                forward=forward,
                optimizer="adamw-fused",
                precision="bf16-mixed",
                device=H200,
            )
        done[key] = {
            "ops": _arrays(traced.record, noted[1:]),
            "measured": row["measured"],
            "busy_s": row["profile"]["device_busy_s"],
            "ops_profile": row["profile"]["ops"],
        }
        cache.write_bytes(pickle.dumps(done))
        print(
            f"{key}: {len(traced.record.ops)} ops in {time.perf_counter() - started:.1f} s",
            flush=True,
        )


noted: list = []  # what techniques noted for each operator, in order (recorded by _taking)


def _taking():
    counts = _take()
    noted.append(counts)
    return counts


_take = session.take_overhead
session.take_overhead = _taking


def _arrays(record, notes: list) -> dict:
    assert len(notes) == len(record.ops), (len(notes), len(record.ops))
    steady = "optimizer1" in record.marks
    keep = [not (steady and op.stage == "optimizer0") for op in record.ops]
    ops = [op for op, k in zip(record.ops, keep, strict=True) if k]
    notes = [n for n, k in zip(notes, keep, strict=True) if k]
    stage = {"forward": 0, "backward": 1}
    waves = [_wave_shape(op.shape) for op in ops]
    return {
        "kind": np.array([KINDS.index(op.kind) for op in ops], dtype=np.int8),
        "stage": np.array(
            [0 if op.recompute else stage.get(op.stage, 2) for op in ops], dtype=np.int8
        ),
        "flops": np.array([op.flops for op in ops]),
        "bytes": np.array([op.bytes for op in ops], dtype=np.float64),
        "rate": np.array([op.rate for op in ops]),
        "backward_attention": np.array(
            [op.kind == "attention" and "backward" in op.op for op in ops]
        ),
        "sync": np.array([op.synchronises for op in ops]),
        "kernels": np.array([op.kernels for op in ops], dtype=np.float64),
        "tensors": np.array(
            [op.tensors if op.kind == "optimizer" else 0 for op in ops], dtype=np.float64
        ),
        **{
            f"noted_{kind}": np.array([n.get(kind, 0) for n in notes], dtype=np.float64)
            for kind in NOTED
        },  # fmt: skip
        "wave": np.array(waves),
        "unaligned": np.array([_unaligned(_work(op)) for op in ops]),
        "names": [op.op for op in ops],
    }


def _wave_shape(shape) -> float:
    return wave_efficiency(tuple(shape), H200, Calibration().matmul_tile) if shape else 1.0


def _work(op):
    from memfit.cost.classes import OpWork

    dtype = torch.bfloat16 if op.rate == H200.bf16_flops else torch.float32
    return OpWork(op.op, op.kind, op.flops, op.bytes, dtype, op.kernels, tuple(op.shape))


def device_times(a: dict, c: Calibration) -> np.ndarray:
    """memfit.cost.device.device_seconds, vectorised over a trace's operators."""
    kind = a["kind"]
    efficiency = np.full(len(kind), c.bandwidth_efficiency)
    for name, field in _BANDWIDTH_CLASS.items():
        efficiency[kind == KINDS.index(name)] = getattr(c, field)
    memory = a["bytes"] / (H200.bandwidth_bytes_s * efficiency)
    compute = np.zeros(len(kind))
    for name in ("matmul", "attention", "conv"):
        mask = kind == KINDS.index(name)
        eff = np.full(mask.sum(), getattr(c, f"{name}_efficiency"))
        if name == "attention":
            eff[a["backward_attention"][mask]] = c.attention_backward_efficiency
        if name == "matmul":
            eff = (
                eff
                * a["wave"][mask]
                * np.where(a["unaligned"][mask], c.unaligned_matmul_factor, 1.0)
            )
        compute[mask] = a["flops"][mask] / (a["rate"][mask] * eff)
        memory[mask] = a["bytes"][mask] / (H200.bandwidth_bytes_s * c.bandwidth_efficiency)
    seconds = np.maximum(compute, memory) + a["kernels"] * c.kernel_s
    seconds[kind == KINDS.index("none")] = 0.0
    return seconds


def host_times(a: dict, c: Calibration) -> np.ndarray:
    host = np.choose(a["stage"], [c.host_forward_op_s, c.host_backward_op_s, c.host_optimizer_op_s])
    host = np.where(a["kind"] == KINDS.index("none"), c.host_view_op_s, host)
    host = host + a["tensors"] * c.host_tensor_s
    for kind in NOTED:
        host = host + a[f"noted_{kind}"] * getattr(c, f"{kind}_s")
    return host


def overlapped(host: np.ndarray, device: np.ndarray, sync: np.ndarray) -> float:
    """memfit.cost.timeline.overlapped_seconds, vectorised per stretch between synchronising
    operators: done_n = D_n + max(done_0, max_k (issued_k - D_k-1)), D the device prefix sums."""
    issued = done = 0.0
    for stretch in np.split(np.arange(len(host)), np.flatnonzero(sync) + 1):
        if not len(stretch):
            continue
        issued_k = issued + np.cumsum(host[stretch])
        prefix = np.cumsum(device[stretch])
        done = prefix[-1] + max(done, float(np.max(issued_k - (prefix - device[stretch]))))
        issued = done if sync[stretch[-1]] else float(issued_k[-1])
    return max(issued, done)


def predict(a: dict, c: Calibration) -> tuple[float, float, float]:
    device, host = device_times(a, c), host_times(a, c)
    return overlapped(host, device, a["sync"]), float(device.sum()), float(host.sum())


def fit(cache: Path, out: Path) -> None:
    from scipy.optimize import minimize

    data = pickle.loads(cache.read_bytes())
    train = {k: v for k, v in data.items() if k.split(" | ")[0] in TRAIN}
    base = Calibration()

    def with_values(fields, values) -> Calibration:
        return dataclasses.replace(base, **dict(zip(fields, np.exp(values), strict=True)))

    groups = [g for v in train.values() for g in _op_groups(v)]
    joined = {k: np.concatenate([g[0][k] for g in groups]) for k in ARRAYS}
    group_of = np.concatenate([np.full(len(g[0]["kind"]), i) for i, g in enumerate(groups)])
    measured = np.array([g[2] for g in groups])

    def device_loss(values) -> float:
        c = with_values(DEVICE_FIELDS, values)
        predicted = np.bincount(group_of, device_times(joined, c), minlength=len(groups))
        return float(np.sum(measured * np.log(predicted / measured) ** 2) / measured.sum())

    start = np.log([getattr(base, f) for f in DEVICE_FIELDS])
    device_fit = minimize(device_loss, start, method="Nelder-Mead", options={"maxiter": 4000})
    base = with_values(DEVICE_FIELDS, device_fit.x)

    fitted = dataclasses.replace(base, **_host_fit(train))
    rows = {}
    for key, v in data.items():
        step_s, device_s, host_s = predict(v["ops"], fitted)
        rows[key] = {"measured_step_s": v["measured"]["step_s"], "predicted_step_s": step_s,
                     "measured_busy_s": v["busy_s"], "predicted_device_s": device_s,
                     "measured_host_s": v["measured"]["host_s"], "predicted_host_s": host_s,
                     "set": "train" if key.split(" | ")[0] in TRAIN else "held out"}  # fmt: skip
    report = _overheads(rows)
    result = {"calibration": dataclasses.asdict(fitted), "train": TRAIN, "held_out": HELD_OUT,
              "rows": rows, "overheads": report}  # fmt: skip
    out.write_text(json.dumps(result, indent=1))
    _print(rows, report, fitted)


ARRAYS = ("kind", "flops", "bytes", "rate", "backward_attention", "kernels", "wave", "unaligned")


def _host_features(a: dict) -> np.ndarray:
    """What each host constant multiplies in a trace (the columns of HOST_FIELDS)."""
    none = a["kind"] == KINDS.index("none")
    return np.array(
        [
            np.sum((a["stage"] == 0) & ~none),
            np.sum((a["stage"] == 1) & ~none),
            np.sum((a["stage"] == 2) & ~none),
            np.sum(none),
            a["tensors"].sum(),
            *(a[f"noted_{kind}"].sum() for kind in NOTED),
        ]
    )


def _host_fit(train: dict) -> dict:
    """The host constants by non-negative least squares on the relative error of the host
    time measured for each step (the CPU time to issue it: in a host-bound step, the step)."""
    from scipy.optimize import nnls

    features = np.array([_host_features(v["ops"]) for v in train.values()])
    measured = np.array([v["measured"]["host_s"] for v in train.values()])
    values, _ = nnls(features / measured[:, None], np.ones(len(measured)))
    return dict(zip(HOST_FIELDS, values.tolist(), strict=True))


def _op_groups(v: dict) -> list[tuple[dict, np.ndarray, float]]:
    """(trace, operator indices, measured GPU time) per ATen name the profile saw as often."""
    a, profile = v["ops"], v["ops_profile"]
    names = np.array([n.split(".")[0] for n in a["names"]])
    groups = []
    for name in set(names.tolist()):
        index = np.flatnonzero(names == name)
        seen = profile.get(f"aten::{name}")
        if seen and seen["count"] == len(index) and seen["device_s"] > 0 and a["kind"][index[0]]:
            sub = {k: a[k][index] for k in ARRAYS}
            groups.append((sub, np.arange(len(index)), seen["device_s"]))
    return groups


def _overheads(rows: dict) -> dict:
    """Overhead over each model's unmodified step, predicted and measured, in points."""
    found = {}
    for key, row in rows.items():
        name, label = key.split(" | ")
        base = rows.get(f"{name} | unmodified")
        if base is None or label == "unmodified":
            continue
        measured = row["measured_step_s"] / base["measured_step_s"] - 1
        predicted = row["predicted_step_s"] / base["predicted_step_s"] - 1
        found[key] = {"measured": measured, "predicted": predicted,
                      "error_points": 100 * (predicted - measured), "set": row["set"]}  # fmt: skip
    return found


def _print(rows: dict, overheads: dict, fitted: Calibration) -> None:
    print(json.dumps(dataclasses.asdict(fitted), indent=1))
    header = ("configuration", "meas ms", "pred ms", "err", "busy", "device", "host", "pred")
    print(f"{header[0]:58s}" + "".join(f"{h:>9s}" for h in header[1:]) + "  overhead m/p")
    for key, r in rows.items():
        o = overheads.get(key)
        values = (
            r["measured_step_s"] * 1e3,
            r["predicted_step_s"] * 1e3,
            100 * (r["predicted_step_s"] / r["measured_step_s"] - 1),
            r["measured_busy_s"] * 1e3,
            r["predicted_device_s"] * 1e3,
            r["measured_host_s"] * 1e3,
            r["predicted_host_s"] * 1e3,
        )
        ovh = f"{o['measured']:+6.0%}/{o['predicted']:+6.0%}" if o else ""
        print(f"{key:58s}" + "".join(f"{v:9.1f}" for v in values) + f"  {ovh}")
    for which in ("train", "held out"):
        errs = [abs(o["error_points"]) for o in overheads.values() if o["set"] == which]
        if errs:
            within = sum(e <= 5 for e in errs)
            print(
                f"{which}: overhead error median {np.median(errs):.1f} points, worst "
                f"{max(errs):.1f}, within 5 points: {within}/{len(errs)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("trace", "fit"))
    root = Path(__file__).resolve().parent
    parser.add_argument("--results", type=Path, default=root / "results" / "costs_h200.json.gz")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/memfit_fit_costs.pkl"))
    parser.add_argument("--out", type=Path, default=root / "results" / "fit_costs_h200.json")
    parser.add_argument("--models", help="trace only these")
    args = parser.parse_args()
    if args.what == "trace":
        trace_all(args.results, args.cache, set(args.models.split(",")) if args.models else None)
    else:
        fit(args.cache, args.out)


if __name__ == "__main__":
    main()
