"""cuDNN convolution workspaces as the committed H200 runs measured them, joined to conv shapes.

The validation zoo's GPU run (bench/results/validation_traces_h200.jsonl.gz) kept, for every
operator whose scratch (``peak - after`` inside the call) reached 1 MiB, its phase and its
allocated bytes before, after and at peak (``memfit.measure.op_probe``), but not its shapes. This
script traces the same configurations on this CPU (``memfit.estimate(device="h200")``, whose
allocated bytes match those runs to within 0.3%) and records every convolution call's shapes
and the bytes allocated before it; each measured call is matched to the traced call of the same
phase, operator and output size whose bytes-before are nearest. Traced calls no measured call
matches had a scratch below 1 MiB.

    python bench/conv_evidence.py [--only name,name] [--out bench/results/conv_evidence.json]
    python bench/conv_evidence.py --check   # the rules against it: bench/results/conv_classes.md

Writes one row per traced convolution call: configuration, phase, operator, input / weight /
output shapes, stride, padding, dilation, groups, dtype, channels_last, and the measured
scratch in bytes (0 below 1 MiB), or null when the configuration was not probed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
import memfit.trace.session as session  # noqa: E402
from memfit.trace.cuda.convolution import (  # noqa: E402
    conv_backward_workspaces,
    conv_class,
    conv_forward_workspace,
)
from validation import all_cases  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# the configurations the rules were read from; the others are held out
FITTED = {
    "tv-resnet50-fp32",
    "tv-resnet50-bf16-mixed",
    "inf-tv-resnet50-bf16-mixed",
    "tv-regnet-x-1.6gf-bf16-mixed",
    "tv-efficientnet-b0-fp32",
    "tv-convnext-tiny-fp32",
}
TRACES = RESULTS / "validation_traces_h200.jsonl.gz"
MiB = 1 << 20
aten = torch.ops.aten
CONV_OPS = (aten.convolution, aten.convolution_backward, aten.conv1d, aten.conv2d, aten.conv3d)


def _round(size: int) -> int:
    return -(-size // 512) * 512


def _describe(func: Any, args: tuple, kwargs: dict, out: Any) -> dict[str, Any]:
    name = "convolution_backward"
    if func.overloadpacket is aten.convolution_backward:
        grad, x, weight = args[:3]
        stride, padding, dilation, transposed, _, groups = args[4:10]
        outputs = [o for o in out if isinstance(o, torch.Tensor)]
    else:
        x, weight = args[:2]
        if func.overloadpacket is aten.convolution:
            stride, padding, dilation, transposed, _, groups = args[3:9]
        else:  # conv2d(input, weight, bias, stride, padding, dilation, groups)
            stride, padding, dilation, groups = list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]) :]
            transposed = False
        grad, outputs, name = out, [out], "convolution"
    return {
        "op": name,
        "input": list(x.shape),
        "weight": list(weight.shape),
        "output": list(grad.shape),
        "stride": list(stride) if not isinstance(stride, int) else [stride],
        "padding": padding if isinstance(padding, str) else list(padding),
        "dilation": list(dilation) if not isinstance(dilation, int) else [dilation],
        "transposed": bool(transposed),
        "groups": int(groups),
        "dtype": str(x.dtype).removeprefix("torch."),
        "channels_last": x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous(),
        "output_bytes": sum(_round(o.untyped_storage().nbytes()) for o in outputs),
    }


def trace_calls(case: Any) -> list[dict[str, Any]]:
    """Every convolution call of the case's predicted step, with the bytes allocated before."""
    calls: list[dict[str, Any]] = []
    state = {"seen": 0, "live": 0}
    original = session.cuda_workspace_rules

    def rules(device: Any, stack: Any) -> dict[Any, Any]:
        base = original(device, stack)
        wrapped = {op: base.get(op) for op in CONV_OPS}

        def log(recorder: Any, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
            events = recorder.trace.events
            allocations = recorder.trace.allocations
            for key in events[state["seen"] :]:
                allocation = allocations[abs(key)]
                if not allocation.host:
                    state["live"] += _round(allocation.size) * (1 if key > 0 else -1)
            state["seen"] = len(events)
            row = _describe(func, args, kwargs, out)
            row.update(phase=recorder.phase.value, before=state["live"] - row["output_bytes"])
            calls.append(row)
            rule = wrapped.get(func.overloadpacket)
            if rule is not None:
                rule(recorder, func, args, kwargs, out)

        base.update({op: log for op in CONV_OPS})
        return base

    session.cuda_workspace_rules = rules
    builder, spec = case.built(False)
    options: dict[str, Any] = dict(
        loss_fn=case.loss_fn(),
        forward=case.forward(),
        optimizer=case.optimizer_arg(),
        precision=case.precision,
        device="h200",
    )
    if case.mode != "train":
        options.update(mode="inference", optimizer=None)
    try:
        memfit.estimate(builder, spec, **options)
    finally:
        session.cuda_workspace_rules = original
    return calls


def match(calls: list[dict[str, Any]], notable: list[list]) -> None:
    """Give each traced call the scratch of the measured call it matches (0 when none).

    The traced step is the first one, the measured one a steady step (optimizer state, the
    previous step's leftovers), so bytes-before differ by an offset that is constant within a
    phase: taken as the most common difference over the pairs of the same operator and output
    size; each measured call then goes to the candidate whose difference is nearest it.
    """
    for call in calls:
        call["scratch"] = 0
    for phase in ("forward", "backward"):
        measured = [n for n in notable if n[0] == phase]
        pairs = [
            (n, c)
            for n in measured
            for c in calls
            if c["phase"] == phase
            and c["op"] == ("convolution" if n[1] in ("conv1d", "conv2d", "conv3d") else n[1])
            and abs(c["output_bytes"] - (n[3] - n[2])) <= MiB
        ]
        if not pairs:
            continue
        votes = Counter(round((n[2] - c["before"]) / MiB) for n, c in pairs)
        offset = max(votes, key=lambda d: sum(votes.get(d + e, 0) for e in (-1, 0, 1))) * MiB
        by_measured: dict[int, list[dict[str, Any]]] = {}
        for n, c in pairs:
            by_measured.setdefault(id(n), []).append(c)
        for n in measured:
            candidates = [c for c in by_measured.get(id(n), []) if "matched" not in c]
            if not candidates:
                continue
            best = min(candidates, key=lambda c: abs(n[2] - c["before"] - offset))
            miss = abs(n[2] - best["before"] - offset)
            best.update(matched=True, scratch=n[4] - n[3], before_miss=miss)


def _meta(shape: list[int], dtype: str, channels_last: bool) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def predicted_scratch(row: dict[str, Any]) -> tuple[str, int]:
    """The class and the scratch the rules predict for one traced call (peak - after)."""
    cl = row["channels_last"]
    x, y = _meta(row["input"], row["dtype"], cl), _meta(row["output"], row["dtype"], cl)
    w = _meta(row["weight"], row["dtype"], False)
    args = (row["stride"], row["padding"], row["groups"])
    kind = conv_class(x, w, *args)
    if row["phase"] == "forward":
        return kind, conv_forward_workspace(x, w, y, *args)
    data, weight = conv_backward_workspaces(y, x, w, *args, [True, True, False])
    # inside the call: grad input, its workspace, grad weight, its workspace
    return kind, max(data - w.numel() * w.element_size(), weight)


def check(path: Path) -> str:
    """Per class, phase and role: how the measured scratch compares with the rules."""
    rows = [r for r in json.loads(path.read_text())["rows"] if r["scratch"] is not None]
    groups: dict[tuple[str, str, str], list[tuple[int, int]]] = {}
    for row in rows:
        kind, predicted = predicted_scratch(row)
        role = "fitted" if row["name"] in FITTED else "held out"
        groups.setdefault((kind, row["phase"], role), []).append((row["scratch"], predicted))
    lines = [
        "# cuDNN convolution workspaces: the rules against every measured call",
        "",
        "Scratch inside each convolution call (peak - after, H200, torch 2.11, cuDNN 9.19; "
        "below 1 MiB counts as 0) against memfit.trace.cuda.convolution, from "
        "bench/results/conv_evidence.json (`python bench/conv_evidence.py --check`). Fitted: "
        f"{', '.join(sorted(FITTED))}; the other configurations are held out. The measured "
        "scratch of a backward call includes its bias gradient's reduction buffer (a sum of "
        "the output gradient after cuDNN returns), which memfit models apart from the "
        "workspace (memfit.trace.cuda.reductions) and which is not predicted here: every "
        "channels-last row is a ConvNeXt convolution with a bias, whose buffers the first "
        "rules had read as workspace (bench/conv_probe.py's bias-free calls tell them apart).",
        "",
        "| class | phase | role | calls | measured MiB | predicted MiB | within 10% or 1 MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for (kind, phase, role), pairs in sorted(groups.items()):
        close = sum(abs(m - p) <= max(0.1 * m, MiB) for m, p in pairs)
        measured = sum(m for m, _ in pairs) / MiB
        predicted = sum(p for _, p in pairs) / MiB
        lines.append(
            f"| {kind} | {phase} | {role} | {len(pairs)} | {measured:.0f} | {predicted:.0f} "
            f"| {close}/{len(pairs)} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--out", default=str(RESULTS / "conv_evidence.json"))
    parser.add_argument("--check", action="store_true", help="compare the rules with --out")
    args = parser.parse_args()
    if args.check:
        table = check(Path(args.out))
        (RESULTS / "conv_classes.md").write_text(table)
        print(table)
        return
    probed = {}
    with gzip.open(TRACES, "rt") as handle:
        for line in handle:
            row = json.loads(line)
            probed[row["name"]] = row.get("ops", {}).get("notable")
    wanted = set(filter(None, args.only.split(",")))
    rows = []
    for case in all_cases():
        if (wanted and case.name not in wanted) or (not wanted and not case.image):
            continue
        calls = trace_calls(case)
        notable = probed.get(case.name)
        if notable is not None:
            match(calls, [n for n in notable if "conv" in n[1]])
        for index, call in enumerate(calls):
            call.pop("matched", None)
            if notable is None:
                call["scratch"] = None
            rows.append({"name": case.name, "precision": case.precision, "index": index, **call})
        ws = [c["scratch"] for c in calls if c["scratch"]]
        print(f"{case.name:42s} {len(calls):4d} calls, {len(ws):4d} with scratch", flush=True)
    lines = ",\n".join(json.dumps(row) for row in rows)  # one call a line
    Path(args.out).write_text(f'{{"rows": [\n{lines}\n]}}\n')


if __name__ == "__main__":
    main()
