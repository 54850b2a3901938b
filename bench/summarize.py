"""Tables and the frontier plot from the committed benchmark results (runs on any machine).

python bench/summarize.py [--results bench/results]
  -> prints the README's Markdown tables (accuracy, frontier, guard)
  -> writes RESULTS/frontier_h200.png (memory vs step time, plans and anchors, one panel a model)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

GiB = 1024**3
ANCHOR_STYLE = {  # label -> (marker, colour)
    "unmodified": ("s", "#444444"),
    "hf full checkpointing": ("D", "#d62728"),
    "memfit full checkpointing": ("d", "#9467bd"),
    "compile 1.0": ("^", "#7f7f7f"),
    "compile 0.5": ("^", "#ff7f0e"),
    "compile 0.2": ("v", "#ff7f0e"),
}


def _load(results: Path, name: str) -> dict[str, Any]:
    path = results / name
    return json.loads(path.read_text()) if path.exists() else {}


def _anchors(model: str, data: dict[str, Any], compiled: dict[str, Any]) -> dict[str, Any]:
    """The eager anchors of one model, then its torch.compile ones (a separate run)."""
    return {**data["anchors"], **compiled.get("models", {}).get(model, {}).get("anchors", {})}


def accuracy_table(acc: dict[str, Any]) -> str:
    lines = [
        "| model | precision | measured allocated | predicted | error | measured reserved "
        "| predicted | error | estimate time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in acc.get("rows", []):
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['measured_allocated'] / GiB:.3f} GiB "
            f"| {r['predicted_allocated'] / GiB:.3f} GiB | {100 * r['error_allocated']:+.3f}% "
            f"| {r['measured_reserved'] / GiB:.3f} GiB | {r['predicted_reserved'] / GiB:.3f} GiB "
            f"| {100 * r['error_reserved']:+.2f}% | {r['estimate_s']:.2f} s |"
        )
    return "\n".join(lines)


def frontier_table(frontier: dict[str, Any], compiled: dict[str, Any]) -> str:
    lines = [
        "| model | run | budget | plan | planning | measured reserved | step | vs unmodified |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for model, data in frontier.get("models", {}).items():
        anchors = _anchors(model, data, compiled)
        base = anchors["unmodified"]["step_s"]
        for label, m in anchors.items():
            lines.append(
                f"| {model} | {label} | | | | {m['peak_reserved'] / GiB:.2f} GiB "
                f"| {1e3 * m['step_s']:.1f} ms | {100 * (m['step_s'] / base - 1):+.1f}% |"
            )
        for p in data["plans"]:
            budget = f"{p['budget'] / GiB:.2f} GiB ({p['label']})"
            if "measured" not in p:
                reason = p.get("error", "").split(":")[0]
                lines.append(
                    f"| {model} | plan | {budget} | {reason} | {p['plan_s']:.1f} s | | | |"
                )
                continue
            m = p["measured"]
            over = " **over budget**" if p["violation"] else ""
            lines.append(
                f"| {model} | plan | {budget} | {p['plan']} | {p['plan_s']:.1f} s "
                f"| {m['peak_reserved'] / GiB:.2f} GiB{over} | {1e3 * m['step_s']:.1f} ms "
                f"| {100 * (m['step_s'] / base - 1):+.1f}% |"
            )
    return "\n".join(lines)


def compiled_plans_table(frontier: dict[str, Any], plans: dict[str, Any]) -> str:
    """The eager plans compiled, against the compiled unmodified step of the same run."""
    lines = [
        "| model | budget | plan | compiled: reserved | step | vs compiled unmodified "
        "| eager step |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for model, data in plans.get("models", {}).items():
        base = data["anchors"]["compile 1.0"]
        lines.append(
            f"| {model} | | compiled unmodified | {base['peak_reserved'] / GiB:.2f} GiB "
            f"| {1e3 * base['step_s']:.1f} ms | | |"
        )
        eager = {p["label"]: p for p in frontier["models"][model]["plans"]}
        for p in data["plans"]:
            if "measured" not in p:
                lines.append(f"| {model} | {p['label']} | {p['plan']} | failed | | | |")
                continue
            m, e = p["measured"], eager[p["label"]].get("measured", {})
            over = " **over budget**" if p["violation"] else ""
            lines.append(
                f"| {model} | {p['budget'] / GiB:.2f} GiB ({p['label']}) | {p['plan']} "
                f"| {m['peak_reserved'] / GiB:.2f} GiB{over} | {1e3 * m['step_s']:.1f} ms "
                f"| {100 * (m['step_s'] / base['step_s'] - 1):+.1f}% "
                f"| {1e3 * e.get('step_s', 0):.1f} ms |"
            )
    return "\n".join(lines)


def guard_table(guard: dict[str, Any]) -> str:
    over, rec = guard.get("overhead", {}), guard.get("recovery", {})
    leak, finder = guard.get("leak", {}), guard.get("find_batch_size", {})
    vs_ref, vs_split = rec.get("vs_reference", {}), rec.get("vs_split_control", {})
    run_to_run = guard.get("reference", {}).get("repeat_vs_first", {})
    rows = [
        ("guard overhead without OOM (target <= 1%)", f"{over.get('overhead_pct', 0):+.2f}%"),
        (
            "recovery from one OOM (target <= 2 steps)",
            f"{rec.get('recovery', {}).get('per_oom_in_reference_steps', 0):.2f} steps",
        ),
        (
            "weights after 5 capped steps vs reference (rel. L2)",
            f"{vs_ref.get('rel_l2_diff', 0):.2e} "
            f"(run-to-run {run_to_run.get('rel_l2_diff', 0):.2e})",
        ),
        ("... vs the same split by hand (rel. L2)", f"{vs_split.get('rel_l2_diff', 0):.2e}"),
        ("LeakWatch: leak reported at step", str(leak.get("detected_at_step"))),
        (
            "find_batch_size: found (predicted first)",
            f"{finder.get('batch_size')} ({finder.get('predicted')}), "
            f"{finder.get('seconds', 0):.0f} s, "
            f"state restored: {finder.get('state_restored_exactly')}",
        ),
    ]
    return "\n".join(["| | H200 |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


def plot_frontier(
    frontier: dict[str, Any], compiled: dict[str, Any], plans: dict[str, Any], out: Path
) -> None:
    models = frontier.get("models", {})
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.4), squeeze=False)
    for ax, (model, data) in zip(axes[0], models.items(), strict=True):
        anchors = _anchors(model, data, compiled)
        points = sorted(
            (p["measured"]["peak_reserved"] / GiB, 1e3 * p["measured"]["step_s"])
            for p in data["plans"]
            if "measured" in p
        )
        ax.plot(*zip(*points, strict=True), "o-", color="#1f77b4", label="memfit plans (eager)")
        for p in data["plans"]:
            ax.axvline(p["budget"] / GiB, color="#1f77b4", alpha=0.12, lw=1)
        compiled_plans = [
            (p["measured"]["peak_reserved"] / GiB, 1e3 * p["measured"]["step_s"])
            for p in plans.get("models", {}).get(model, {}).get("plans", [])
            if "measured" in p
        ]
        if compiled_plans:
            ax.scatter(
                *zip(*compiled_plans, strict=True),
                marker="o",
                facecolors="none",
                edgecolors="#1f77b4",
                s=46,
                label="memfit plans, compiled",
            )
        for label, m in anchors.items():
            marker, colour = ANCHOR_STYLE.get(label, ("x", "black"))
            ax.scatter(
                m["peak_reserved"] / GiB,
                1e3 * m["step_s"],
                marker=marker,
                color=colour,
                s=46,
                zorder=3,
                label=label + ("" if label.startswith("compile") else " (eager)"),
            )
        ax.set_title(model)
        ax.set_xlabel("measured peak reserved (GiB)")
        ax.set_ylabel("step time (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper right")
    gpu = frontier.get("gpu", "GPU")
    fig.suptitle(
        f"Memory vs step time on an {gpu} ({frontier.get('precision')}, "
        f"{frontier.get('optimizer')}; faint lines: budgets)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    results = parser.parse_args().results
    acc = _load(results, "accuracy_h200.json")
    frontier = _load(results, "frontier_h200.json")
    compiled = _load(results, "frontier_compile_h200.json")
    plans = _load(results, "frontier_compile_plans_h200.json")
    guard = _load(results, "guard_h200.json")
    print(accuracy_table(acc), end="\n\n")
    print(frontier_table(frontier, compiled), end="\n\n")
    if plans:
        print(compiled_plans_table(frontier, plans), end="\n\n")
    print(guard_table(guard))
    if frontier:
        plot_frontier(frontier, compiled, plans, results / "frontier_h200.png")


if __name__ == "__main__":
    main()
