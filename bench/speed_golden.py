"""Record, then check, that speed work leaves every prediction byte-identical.

python bench/speed_golden.py --out DIR     records each case's JSON answer under DIR
python bench/speed_golden.py --check DIR   recomputes them and fails on any byte that differs

Each case runs the command line in a fresh process with the answer cache off (--no-cache), so
the whole path a user takes (parsing, tracing, cost model, planner, rendering) is covered.
"""

from __future__ import annotations

import argparse
import difflib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES: dict[str, list[str]] = {
    "estimate_llama-1b": ["estimate", "llama-1b"],
    "estimate_llama-1b_fp32": ["estimate", "llama-1b", "--precision", "fp32"],
    "estimate_gpt2": ["estimate", "gpt2"],
    "estimate_gpt2_fp32_sgd": ["estimate", "gpt2", "--precision", "fp32", "--optimizer", "sgd"],
    "estimate_llama-1b_bf16_fused": [
        "estimate",
        "llama-1b",
        "--precision",
        "bf16",
        "--optimizer",
        "adamw-fused",
        "--batch-size",
        "2",
    ],
    "estimate_vit-b16_fp16-mixed": [
        "estimate",
        "vit-b16",
        "--precision",
        "fp16-mixed",
        "--batch-size",
        "16",
    ],
    "estimate_resnet50_fp32": ["estimate", "resnet50", "--precision", "fp32", "--batch-size", "16"],
    "estimate_bert-base_inference": ["estimate", "bert-base", "--inference"],
    "estimate_llama-1b_gpus2": ["estimate", "llama-1b", "--gpus", "2"],
    "estimate_hf-gpt2": ["estimate", "hf-gpt2", "--batch-size", "2", "--seq-len", "512"],
    "estimate_gpt2_accumulate_clip": [
        "estimate",
        "gpt2",
        "--accumulate",
        "2",
        "--clip-grad-norm",
        "1.0",
    ],
    "plan_llama-1b_16GiB": ["plan", "llama-1b", "--budget", "16GiB"],
    "plan_gpt2_checkpoint": ["plan", "gpt2", "--budget", "9GiB", "--allow", "checkpoint"],
    "plan_gpt2_fp32_8GiB": ["plan", "gpt2", "--budget", "8GiB", "--precision", "fp32"],
    "plan_gpt2_gpus2": ["plan", "gpt2", "--budget", "5GiB", "--gpus", "2"],
}


def _answer(args: list[str]) -> str:
    env = dict(os.environ, MEMFIT_NO_CACHE="1")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from memfit.cli import main; sys.exit(main())",
            *args,
            "--format",
            "json",
            "--no-cache",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", type=Path, help="record the answers here")
    mode.add_argument("--check", type=Path, help="compare against answers recorded here")
    parser.add_argument("--only", nargs="*", help="run only these case names")
    args = parser.parse_args()
    names = args.only or list(CASES)
    differ = []
    for name in names:
        answer = _answer(CASES[name])
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(answer)
            print(f"recorded {name}", flush=True)
            continue
        recorded = (args.check / f"{name}.json").read_text()
        same = recorded == answer
        print(f"{'same' if same else 'DIFFERS'} {name}", flush=True)
        if not same:
            differ.append(name)
            diff = difflib.unified_diff(recorded.splitlines(), answer.splitlines(), lineterm="")
            print("\n".join(list(diff)[:40]))
    if differ:
        raise SystemExit(f"{len(differ)} case(s) differ: {', '.join(differ)}")


if __name__ == "__main__":
    main()
