"""How far one configuration's measured overhead moves between GPU runs (no new measurement).

python bench/anchor_spread.py [--out FILE.md]

Every bench/plans.py run (bench/results/plans_h*.json) and bench/measured_plans.py run
(measured_plans_h100_run*.json.gz) measures two anchors per model beside its plans: the
unmodified step and Hugging Face's ``gradient_checkpointing_enable()``, both stepped by
``memfit.apply`` with no technique (memfit's ``Checkpoint`` of every block stands in where the
model has none, the encoder and ResNet-50: left out here, since memfit's checkpointing changed
between runs). Neither is planned, and the GPU machine's software stayed the same in every run
(torch 2.11.0+cu130, transformers 5.17.0), so each is one configuration measured again on
another machine of the kind or at another moment. Per model and GPU kind: the unmodified step's
milliseconds, Hugging Face checkpointing's overhead over it in each run, and the overhead's
spread (largest minus smallest, in percentage points). Issue 13 asks the step-time model for
+-5 points of measured on every plan: a configuration whose measurements spread by more than 10
points cannot be within 5 of all of them.

Second table: the same plan timed at two or three budgets of one bench/measured_plans.py run
(one process on one machine, minutes apart; each timing the median of 10 steps, in two rounds),
its steps over that run's unmodified anchor. A label names the techniques, not their blocks:
``full ckpt x1`` or ``lean x1`` at two budgets may be two of the 24 layers, all of one shape;
``chunked loss x8`` is the same configuration everywhere.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from result_files import read_json

RESULTS = Path(__file__).resolve().parent / "results"
PATTERNS = ("plans_h*.json*", "measured_plans_h100_run*.json.gz")
# where the anchor is memfit's own checkpointing, whose code changed between runs
MEMFIT_CHECKPOINTING = ("transformer-encoder", "tv-resnet50")


def anchors() -> dict[tuple[str, str], list[tuple[str, float, float]]]:
    """(model, GPU) -> [(result file, unmodified ms, Hugging Face checkpointing's overhead)]."""
    found: dict = defaultdict(list)
    for pattern in PATTERNS:
        for path in sorted(RESULTS.glob(pattern)):
            run = read_json(path)
            gpu = run.get("environment", {}).get("gpu", "?")
            for key, row in run.get("rows", {}).items():
                model, label = key.split(" | ", 1)
                base, full = row.get("unmodified"), row.get("hf full checkpointing")
                if label != "anchors" or not (base and full) or model in MEMFIT_CHECKPOINTING:
                    continue
                overhead = full["step_s"] / base["step_s"] - 1
                found[(model, gpu)].append((path.name, 1e3 * base["step_s"], overhead))
    return dict(found)


def table(found: dict) -> list[str]:
    lines = [
        "| model | GPU | runs | unmodified step (ms) | Hugging Face checkpointing's overhead, "
        "run by run | spread (points) |",
        "|---|---|---:|---|---|---:|",
    ]
    for (model, gpu), runs in sorted(found.items(), key=lambda item: (item[0][0], item[0][1])):
        steps = [ms for _, ms, _ in runs]
        overheads = [o for _, _, o in runs]
        spread = f"{100 * (max(overheads) - min(overheads)):.1f}" if len(runs) > 1 else ""
        lines.append(
            f"| {model} | {gpu} | {len(runs)} | {min(steps):.1f}-{max(steps):.1f} | "
            + ", ".join(f"{100 * o:+.1f}%" for o in overheads)
            + f" | {spread} |"
        )
    return lines


def repeats() -> list[tuple[str, str, str, float, list[float]]]:
    """(result file, model, plan, unmodified ms, [the plan's ms at each budget that timed it])."""
    found = []
    for path in sorted(RESULTS.glob(PATTERNS[1])):
        rows = read_json(path)["rows"]
        timed: dict = defaultdict(list)
        for key, row in rows.items():
            for plan in row.get("timed") or []:
                timed[(key.split(" | ", 1)[0], plan["label"])].append(1e3 * plan["step_s"])
        for (model, label), steps in timed.items():
            base = rows.get(f"{model} | anchors", {}).get("unmodified")
            if len(steps) > 1 and base:
                found.append((path.name, model, label, 1e3 * base["step_s"], steps))
    return found


def repeat_table(found: list) -> list[str]:
    lines = [
        "| run | model | plan | its steps (ms) | over the unmodified step | spread (points) |",
        "|---|---|---|---|---|---:|",
    ]
    for name, model, label, base, steps in found:
        overheads = [100 * (ms / base - 1) for ms in steps]
        lines.append(
            f"| {name} | {model} | {label} | " + ", ".join(f"{ms:.1f}" for ms in steps)
            + " | " + ", ".join(f"{o:+.1f}%" for o in overheads)
            + f" (unmodified {base:.1f} ms) | {max(overheads) - min(overheads):.1f} |"
        )  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    found = anchors()
    files = sorted({name for runs in found.values() for name, _, _ in runs})
    text = "\n".join(
        [
            "The anchors of every committed GPU run, re-read (python bench/anchor_spread.py); "
            "nothing measured anew. Files: " + ", ".join(files) + ".",
            "",
            *table(found),
            "",
            "The same plan timed at several budgets of one run (bench/measured_plans.py, "
            "measure=4; one process, minutes apart; `x1` may name another of the identical "
            "layers):",
            "",
            *repeat_table(repeats()),
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
