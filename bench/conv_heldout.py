"""cuDNN convolution workspaces: the rules against the held-out H200 probe, pass by pass.

    python bench/conv_heldout.py [--probe bench/results/conv_probe_heldout_h200.json]
                                 [--out bench/results/conv_heldout]

bench/results/conv_probe_heldout_h200.json (``python bench/conv_probe.py --grid held-out
--step-cases ""``, H200, torch 2.11, cuDNN 9.19) recorded every allocation of 37 convolution
calls the rules of ``memfit.trace.cuda.convolution`` were not read from, in four passes each:
the forward, the backward with both gradients, and each gradient alone. No new measurement:
this predicts each pass's workspace with the rules, on meta tensors, and compares.

Scratch, measured: the bytes the pass asked the caching allocator for and gave back before it
returned (the allocations ``conv_probe`` marks ``freed``: cuDNN's workspaces), summed over the
pass. That is the quantity the rules size (``conv_forward_workspace`` and
``conv_backward_workspaces`` return a request in bytes, tail included) and the one their probe
figures in tests/trace/test_conv_workspaces.py quote (53,592,743 B, not a block size).
Predicted: the forward's workspace; the input gradient's or the weight gradient's alone; both
for the backward (made one after the other, dx's first). ``peak - after``, which
bench/conv_evidence.py had to use for the zoo's per-operator peaks, is kept in the JSON beside
it (``peak_minus_after``), but it adds the allocator's 512-byte rounding and the unsplit tail of
a cached block it reuses (up to 1 MiB; 0.77 MB on a 39 MB workspace here), which memfit's
allocator simulation models apart, and in the two-gradient backward it folds the two
workspaces into one number.

Writes OUT.json (every case and pass: shape, class, measured and predicted bytes, the
measured allocations freed, whether the first call differed) and OUT.md (the table and a
summary by dtype, kernel, groups, layout and stride). ``--probe
bench/results/conv_probe_h200.json --out /tmp/x`` runs the same comparison on the grid the
rules were read from.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.trace.cuda.convolution import (  # noqa: E402
    conv_backward_workspaces,
    conv_class,
    conv_forward_workspace,
)

RESULTS = Path(__file__).resolve().parent / "results"
PASSES = ("forward", "backward", "backward_data", "backward_weight")
MASKS = {"backward": [True, True], "backward_data": [True, False], "backward_weight": [False, True]}
KiB, MiB = 1 << 10, 1 << 20
EXACT = 4 * KiB  # within this many bytes: "exact"
CLOSE = 0.05  # within this fraction of the measured bytes: "close"
VERDICTS = ("exact", "close", "over", "under")
GROUPINGS = ("dtype", "kernel", "groups", "layout", "stride", "class")


def _meta(shape: tuple[int, ...], dtype: str, channels_last: bool) -> torch.Tensor:
    tensor = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
    return tensor.contiguous(memory_format=torch.channels_last) if channels_last else tensor


def tensors(case: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, weight and output as conv_probe made them (weight in the input's layout)."""
    kernel, stride, groups = case["kernel"], case["stride"], case["groups"]
    side = (case["spatial"] + 2 * (kernel // 2) - kernel) // stride + 1
    layout = (case["dtype"], case["channels_last"])
    x = _meta((case["batch"], case["c_in"], case["spatial"], case["spatial"]), *layout)
    w = _meta((case["c_out"], case["c_in"] // groups, kernel, kernel), *layout)
    y = _meta((case["batch"], case["c_out"], side, side), *layout)
    return x, w, y


def predicted(case: dict[str, Any]) -> dict[str, int]:
    """The rules' workspace bytes per pass, with TF32 as the case ran it."""
    x, w, y = tensors(case)
    stride, padding, groups = [case["stride"]] * 2, [case["kernel"] // 2] * 2, case["groups"]
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = case["tf32"]
    try:
        result = {"forward": conv_forward_workspace(x, w, y, stride, padding, groups)}
        for name, mask in MASKS.items():
            data, weight = conv_backward_workspaces(y, x, w, stride, padding, groups, mask)
            result[name] = data + weight
    finally:
        torch.backends.cudnn.allow_tf32 = saved
    return result


def _freed(allocations: list[dict[str, Any]]) -> list[int]:
    return [a["size"] for a in allocations if "size" in a and a["freed"]]


def measured(run: dict[str, Any]) -> dict[str, Any]:
    """One recorded pass: the bytes allocated and freed inside it, and its peak - after."""
    freed = _freed(run["allocations"])
    return {
        "measured": sum(freed),
        "freed": freed,
        "first_differs": _freed(run["first"]["allocations"]) != freed,
        "peak_minus_after": run["peak"] - run["after"],
    }


def verdict(measured_bytes: int, predicted_bytes: int) -> str:
    miss = predicted_bytes - measured_bytes
    if abs(miss) <= EXACT:
        return "exact"
    if abs(miss) <= CLOSE * measured_bytes:
        return "close"
    return "over" if miss > 0 else "under"


def _dtype(case: dict[str, Any]) -> str:
    no_tf32 = case["dtype"] == "float32" and not case["tf32"]
    return "float32 (no TF32)" if no_tf32 else case["dtype"]


def label(case: dict[str, Any]) -> str:
    layout = " CL" if case["channels_last"] else ""
    shape = f"{case['c_in']}->{case['c_out']} k{case['kernel']} s{case['stride']}"
    groups = f" g{case['groups']}" if case["groups"] > 1 else ""
    side = f"{case['spatial']}x{case['spatial']}"
    return f"{_dtype(case)}{layout} {shape}{groups} {side} batch {case['batch']}"


def groups_kind(case: dict[str, Any]) -> str:
    if case["groups"] == 1:
        return "dense"
    return "depthwise" if case["groups"] == case["c_in"] else "grouped"


def compare(case: dict[str, Any]) -> dict[str, Any]:
    """One probed call: its description and, per pass, measured against predicted."""
    x, w, _ = tensors(case)
    stride, padding = [case["stride"]] * 2, [case["kernel"] // 2] * 2
    row = {k: case[k] for k in ("c_in", "c_out", "kernel", "stride", "groups", "spatial")}
    row.update(
        label=label(case),
        batch=case["batch"],
        dtype=_dtype(case),
        layout="channels_last" if case["channels_last"] else "NCHW",
        groups_kind=groups_kind(case),
        conv_class=conv_class(x, w, stride, padding, case["groups"]),
    )
    rules = predicted(case)
    for name in PASSES:
        entry = measured(case[name])
        entry["predicted"] = rules[name]
        entry["verdict"] = verdict(entry["measured"], rules[name])
        row[name] = entry
    return row


def _key(row: dict[str, Any], grouping: str) -> str:
    return {
        "dtype": row["dtype"],
        "kernel": f"{row['kernel']}x{row['kernel']}",
        "groups": row["groups_kind"],
        "layout": row["layout"],
        "stride": str(row["stride"]),
        "class": row["conv_class"],
    }[grouping]


def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Passes per verdict, with the measured and predicted bytes summed."""
    passes = [row[name] for row in rows for name in PASSES]
    counts = {v: sum(p["verdict"] == v for p in passes) for v in VERDICTS}
    return {
        "passes": len(passes),
        **counts,
        "measured_mib": round(sum(p["measured"] for p in passes) / MiB, 2),
        "predicted_mib": round(sum(p["predicted"] for p in passes) / MiB, 2),
    }


def by_class(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The tally per value of each grouping (dtype, kernel size, groups, layout, stride, the
    rules' class)."""
    result: dict[str, dict[str, Any]] = {}
    for grouping in GROUPINGS:
        values = sorted({_key(row, grouping) for row in rows})
        result[grouping] = {
            value: tally([row for row in rows if _key(row, grouping) == value]) for value in values
        }
    return result


def misses(rows: list[dict[str, Any]], limit: int = 12) -> list[dict[str, Any]]:
    """The passes off by more than 5% (and 4 KiB), largest absolute miss first; the backward
    with both gradients left out (it repeats its gradients' misses)."""
    found = [
        {"case": row["label"], "pass": name, **row[name]}
        for row in rows
        for name in PASSES
        if name != "backward" and row[name]["verdict"] in ("over", "under")
    ]
    found.sort(key=lambda m: -abs(m["predicted"] - m["measured"]))
    return found[:limit]


def _mib(nbytes: int) -> str:
    return f"{nbytes / MiB:.3f}"


def _cell(entry: dict[str, Any]) -> str:
    mark = {"exact": "", "close": " ~", "over": " **over**", "under": " **under**"}
    return f"{_mib(entry['measured'])} / {_mib(entry['predicted'])}{mark[entry['verdict']]}"


def case_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| call | class | forward | backward | backward data | backward weight |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = " | ".join(_cell(row[name]) for name in PASSES)
        lines.append(f"| {row['label']} | {row['conv_class']} | {cells} |")
    return lines


def class_table(classes: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| by | value | passes | within 4 KiB | within 5% | over | under | measured MiB "
        "| predicted MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for grouping, values in classes.items():
        for value, t in values.items():
            lines.append(
                f"| {grouping} | {value} | {t['passes']} | {t['exact']} | {t['close']} "
                f"| {t['over']} | {t['under']} | {t['measured_mib']} | {t['predicted_mib']} |"
            )
    return lines


def miss_table(found: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| call | pass | measured MiB | predicted MiB | predicted - measured MiB |",
        "|---|---|---|---|---|",
    ]
    for m in found:
        gap = m["predicted"] - m["measured"]
        lines.append(
            f"| {m['case']} | {m['pass']} | {_mib(m['measured'])} | {_mib(m['predicted'])} "
            f"| {gap / MiB:+.3f} |"
        )
    return lines


def _versions(v: dict[str, Any]) -> str:
    return f"{v['gpu']}, torch {v['torch']}, cuDNN {v['cudnn']}, benchmark {v['cudnn_benchmark']}"


def markdown(result: dict[str, Any], source: str) -> str:
    t = result["summary"]
    first = result["first_call_differs"]
    lines = [
        "# cuDNN convolution workspaces: the rules against the held-out probe",
        "",
        f"`python bench/conv_heldout.py` on {source} ({_versions(result['versions'])}). Per "
        "pass, the "
        "bytes allocated and freed inside the call (cuDNN's workspaces, summed; the backward "
        "with both gradients has two) against memfit.trace.cuda.convolution's workspace bytes "
        "for the same call on meta tensors. Cells: measured / predicted MiB; `~` within 5%, "
        "**over** / **under** beyond 5% and 4 KiB; no mark: within 4 KiB. Every pass measured "
        f"its second call; the first call's allocations differed in {first} passes.",
        "",
        f"**{t['passes']} passes: {t['exact']} within 4 KiB, {t['close']} more within 5%, "
        f"{t['over']} over, {t['under']} under.** Summed: {t['measured_mib']} MiB measured, "
        f"{t['predicted_mib']} MiB predicted.",
        "",
        "## By class",
        "",
        *class_table(result["by_class"]),
        "",
        "## Largest misses",
        "",
        "Forward and single-gradient passes (the two-gradient backward repeats them).",
        "",
        *miss_table(result["largest_misses"]),
        "",
        "## Every call",
        "",
        *case_table(result["rows"]),
    ]
    return "\n".join(lines) + "\n"


def run(probe: Path) -> dict[str, Any]:
    data = json.loads(probe.read_text())
    rows = [compare(case) for case in data["cases"] if "error" not in case]
    return {
        "versions": data["versions"],
        "probe": probe.name,
        "errors": sum("error" in case for case in data["cases"]),
        "first_call_differs": sum(row[n]["first_differs"] for row in rows for n in PASSES),
        "summary": tally(rows),
        "by_class": by_class(rows),
        "largest_misses": misses(rows),
        "rows": rows,
    }


def write_json(result: dict[str, Any], path: Path) -> None:
    """The result with one call a line."""
    head = {k: v for k, v in result.items() if k != "rows"}
    rows = ",\n".join(json.dumps(row) for row in result["rows"])
    path.write_text(f'{json.dumps(head, indent=1)[:-2]},\n "rows": [\n{rows}\n]}}\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", default=str(RESULTS / "conv_probe_heldout_h200.json"))
    parser.add_argument("--out", default=str(RESULTS / "conv_heldout"), help="OUT.json, OUT.md")
    args = parser.parse_args()
    probe, out = Path(args.probe), Path(args.out)
    result = run(probe)
    write_json(result, out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(result, f"`{probe.name}`"))
    t = result["summary"]
    print(
        f"{t['passes']} passes: {t['exact']} within 4 KiB, {t['close']} within 5%, "
        f"{t['over']} over, {t['under']} under"
    )


if __name__ == "__main__":
    main()
