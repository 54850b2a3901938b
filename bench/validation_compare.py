"""The validation zoo's error table: predictions against GPU measurements, with the summary
figures the targets are stated in (median and worst absolute error, failures, estimate time)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

GiB = 1 << 30
TARGETS = {"allocated": (0.005, 0.03), "reserved": (0.01, 0.05)}  # (median, worst), issue 12


def load_measurements(paths: list[str]) -> tuple[dict[str, dict], list[dict]]:
    """Measured rows by configuration name, from files or directories of validation_*.json.

    A file may hold one group (``rows``) or several (``groups``: a list of such objects, as
    the committed bench/results/validation_h200.json does). Returns the rows and the headers.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.glob("validation_*.json")) if path.is_dir() else [path]
    rows: dict[str, dict] = {}
    headers: list[dict] = []
    for file in files:
        data = json.loads(file.read_text())
        for group in data.get("groups", [data]):
            if group.get("kind") != "measure":
                continue
            headers.append({k: v for k, v in group.items() if k != "rows"})
            rows.update({row["name"]: row for row in group["rows"]})
    return rows, headers


def error(predicted: int | None, measured: int | None) -> float | None:
    if not predicted or not measured:
        return None
    return predicted / measured - 1


def compare(measured: dict[str, dict], predicted: dict[str, Any]) -> dict[str, Any]:
    """One row per configuration measured or predicted, and the summary."""
    rows = []
    by_name = {row["name"]: row for row in predicted["rows"]}
    for name in list(measured) + [n for n in by_name if n not in measured]:
        m, p = measured.get(name, {}), by_name.get(name, {})
        base = m or p
        row = {k: base.get(k) for k in ("name", "group", "arch", "precision", "optimizer", "mode")}
        row.update(
            measured_status=m.get("status", "not measured"),
            predicted_status=p.get("status", "not predicted"),
            measured_allocated=m.get("measured_allocated"),
            measured_reserved=m.get("measured_reserved"),
            predicted_allocated=p.get("predicted_allocated"),
            predicted_reserved=p.get("predicted_reserved"),
            estimate_s=p.get("estimate_s"),
            error=p.get("error") or m.get("error"),
        )
        for key in ("allocated", "reserved"):
            row[f"error_{key}"] = error(row[f"predicted_{key}"], row[f"measured_{key}"])
        rows.append(row)
    return {"rows": rows, "summary": summarize(rows)}


def summarize(rows: list[dict]) -> dict[str, Any]:
    compared = [r for r in rows if r["error_allocated"] is not None]
    summary: dict[str, Any] = {
        "configurations": len(rows),
        "architectures": len({r["arch"] for r in rows}),
        "compared": len(compared),
        "predicted_status": _count(r["predicted_status"] for r in rows),
        "measured_status": _count(r["measured_status"] for r in rows),
    }
    for key, (median_target, worst_target) in TARGETS.items():
        errors = [abs(r[f"error_{key}"]) for r in compared if r[f"error_{key}"] is not None]
        if errors:
            median, worst = statistics.median(errors), max(errors)
            summary[key] = {
                "median_abs_error": median,
                "worst_abs_error": worst,
                "within_1pct": sum(e <= 0.01 for e in errors),
                "within_3pct": sum(e <= 0.03 for e in errors),
                "target_median": median_target,
                "target_worst": worst_target,
                "met": median <= median_target and worst <= worst_target,
            }
    times = [r["estimate_s"] for r in rows if r["estimate_s"] is not None]
    if times:
        summary["estimate_s"] = {"median": statistics.median(times), "max": max(times)}
    return summary


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _gib(value: int | None) -> str:
    return f"{value / GiB:.3f}" if value else "-"


def _pct(value: float | None) -> str:
    return f"{value:+.2%}" if value is not None else "-"


def markdown(result: dict[str, Any]) -> str:
    """The summary and the per-configuration table, as Markdown."""
    s = result["summary"]
    lines = [
        f"Measured: {result['measured_on']}. Predicted: {result['predicted_on']}.",
        "",
        f"{s['configurations']} configurations over {s['architectures']} architectures; "
        f"{s['compared']} compared. Prediction status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["predicted_status"].items()))
        + ". Measurement status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(s["measured_status"].items()))
        + ".",
        "",
        "| peak | median abs error | worst abs error | within 1% | within 3% | target "
        "(median / worst) | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in TARGETS:
        if key in s:
            k = s[key]
            lines.append(
                f"| {key} | {k['median_abs_error']:.2%} | {k['worst_abs_error']:.2%} | "
                f"{k['within_1pct']}/{s['compared']} | {k['within_3pct']}/{s['compared']} | "
                f"{k['target_median']:.1%} / {k['target_worst']:.0%} | "
                f"{'yes' if k['met'] else 'no'} |"
            )
    if "estimate_s" in s:
        lines += [
            "",
            f"Estimate time: median {s['estimate_s']['median']:.2f} s, "
            f"worst {s['estimate_s']['max']:.2f} s.",
        ]
    lines += [
        "",
        "| configuration | precision | optimizer | mode | measured alloc GiB | predicted | "
        "error | measured reserved GiB | predicted | error | estimate s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        status = "" if r["predicted_status"] == "ok" else f" ({r['predicted_status']})"
        if r["measured_status"] != "ok":
            status += f" (measurement {r['measured_status']})"
        est = f"{r['estimate_s']:.2f}" if r["estimate_s"] is not None else "-"
        lines.append(
            f"| {r['name']}{status} | {r['precision']} | {r['optimizer'] or '-'} | {r['mode']} | "
            f"{_gib(r['measured_allocated'])} | {_gib(r['predicted_allocated'])} | "
            f"{_pct(r['error_allocated'])} | {_gib(r['measured_reserved'])} | "
            f"{_gib(r['predicted_reserved'])} | {_pct(r['error_reserved'])} | {est} |"
        )
    return "\n".join(lines) + "\n"


def _stack(versions: dict[str, Any]) -> str:
    keys = ("gpu", "torch", "transformers", "torchvision", "timm", "peft")
    return ", ".join(f"{k} {versions[k]}" for k in keys if versions.get(k))


def compare_files(measured_paths: list[str], predictions_path: str, out: Path) -> dict[str, Any]:
    """Write DIR/validation_compare.json and .md; print the Markdown."""
    measured, headers = load_measurements(measured_paths)
    predicted = json.loads(Path(predictions_path).read_text())
    result = compare(measured, predicted)
    measured_on = sorted({_stack(h.get("versions", {})) for h in headers}) or ["nothing"]
    result["measured_on"] = "; ".join(measured_on)
    result["predicted_on"] = (
        f"memfit.estimate(device={predicted.get('device')!r}) on "
        f"{_stack(predicted.get('versions', {}))}"
    )
    result["measured_versions"] = [h.get("versions") for h in headers]
    result["predicted_versions"] = predicted.get("versions")
    (out / "validation_compare.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (out / "validation_compare.md").write_text(text)
    print(text)
    return result
