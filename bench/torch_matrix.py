"""The tracer under several torch releases: its tests and a few predictions, side by side.

memfit supports torch >= 2.6; CI runs the newest only. This script builds one virtual
environment per torch release (the wheels from PyPI, or a local wheel file), installs the
same versions of everything else as the environment that runs it (so only torch and its
torchvision change), then in each runs the tracer's tests (``tests/trace``, not the slow ones)
and predicts a handful of zoo models, and writes what passed and what was predicted, with each
prediction's difference from the reference release (the first given)::

    python bench/torch_matrix.py --torch 2.14.1=current 2.6.0 2.13.0 2.11.0 2.9.1 \\
        --venvs ~/.cache/memfit-torch-matrix --out bench/results/torch_matrix.json
    python bench/torch_matrix.py --summary --out bench/results/torch_matrix.json

``RELEASE=current`` uses the running interpreter; ``RELEASE=path/to/torch.whl`` installs that
wheel. A release from PyPI is its CUDA build, with its nvidia-* libraries (3-4 GB per release,
which ``import torch`` needs even without a GPU); tests that need a GPU are left out. ``--keep``
adds releases to an existing ``--out``. ``--smoke`` runs two tests and one small prediction per
release.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (zoo name, batch size, sequence length, precision, mode): small sizes, every model class
CASES = [
    ("gpt2", 2, 256, "bf16-mixed", "train"),
    ("gpt2", 2, 256, "fp32", "train"),
    ("llama-1b", 1, 512, "bf16-mixed", "train"),
    ("bert-base", 4, 128, "bf16-mixed", "train"),
    ("resnet50", 8, None, "bf16-mixed", "train"),
    ("vit-b16", 4, None, "fp32", "train"),
    ("hf-gpt2", 2, 256, "bf16-mixed", "train"),
    ("hf-llama-1b", 1, 512, "bf16-mixed", "train"),
    ("hf-bert-base", 4, 128, "fp32", "inference"),
]
SMOKE_CASES = [("gpt2", 1, 64, "bf16-mixed", "train")]
SMOKE_TESTS = [
    "tests/trace/test_estimate.py::test_fp32_saved_activations_per_module",
    "tests/trace/test_estimate.py::test_the_user_module_is_left_untouched",
]

# everything but torch and torchvision comes in the versions this interpreter has
SAME_AS_HERE = ["transformers", "timm", "peft", "click", "numpy", "scipy", "matplotlib", "pytest"]


def _torchvision_for(torch_release: str) -> str:
    """torchvision's release for a torch release: 0.(minor + 15) since torch 2.0."""
    major, minor = (int(x) for x in torch_release.split(".")[:2])
    assert major == 2, torch_release
    return f"torchvision~=0.{minor + 15}.0"


def _python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def _make_venv(release: str, source: str, venvs: Path) -> Path:
    """The interpreter of an environment with ``release`` installed (built once)."""
    if source == "current":
        return Path(sys.executable)
    venv = venvs / f"torch-{release}"
    python = _python_in(venv)
    if python.exists() and (venv / "complete").exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    torch_req = source if source.endswith(".whl") else f"torch=={release}"
    pins = []
    for name in SAME_AS_HERE:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    command = [str(python), "-m", "pip", "install", "-q", torch_req, _torchvision_for(release)]
    subprocess.run(command + pins, check=True)
    (venv / "complete").write_text("")
    return python


def _run_tests(python: Path, tests: list[str], out: Path) -> dict:
    """The tests' outcomes under this interpreter, from pytest's JUnit XML."""
    xml = Path(f"{out}.xml")
    started = time.perf_counter()
    done = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow and not gpu"]
        + ["--junitxml", str(xml), *tests],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                messages[name] = (found.get("message") or "")[:300]
        outcomes[name] = outcome
    xml.unlink()
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "skipped")}
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "exit_code": done.returncode,
        "counts": counts,
        "failed": {n: messages.get(n, "") for n, o in outcomes.items() if o == "failed"},
        "skipped": {n: messages.get(n, "") for n, o in outcomes.items() if o == "skipped"},
        "tail": done.stdout[-1500:] if done.returncode not in (0, 1) else "",
    }


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _predict(python: Path, cases: list) -> dict:
    """Each case's prediction under this interpreter (this script's --predict mode)."""
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--predict", json.dumps(cases)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def predict_here(cases: list) -> dict:
    """Predictions with the torch this interpreter has (run inside each environment)."""
    import torch

    import memfit

    results: dict = {"torch": torch.__version__, "cases": {}}
    for name, batch, seq, precision, mode in cases:
        key = f"{name} b{batch}" + (f"x{seq}" if seq else "") + f" {precision} {mode}"
        started = time.perf_counter()
        try:
            profile = memfit.estimate(
                name, batch_size=batch, seq_len=seq, precision=precision, mode=mode
            )
        except Exception as error:  # noqa: BLE001 - recorded, and the next case runs
            results["cases"][key] = {"error": f"{type(error).__name__}: {error}"[:500]}
            continue
        results["cases"][key] = {
            "peak_allocated": profile.peak_allocated,
            "peak_reserved": profile.peak_reserved,
            "seconds": round(time.perf_counter() - started, 2),
            "warnings": [w for w in profile.warnings if not w.startswith("traced with torch")],
        }
    return results


def _compare(runs: dict, reference: str) -> dict:
    """Each release's predictions relative to the reference release's."""
    base = runs[reference]["predictions"].get("cases", {})
    table: dict = {}
    for release, run in runs.items():
        for key, got in run["predictions"].get("cases", {}).items():
            ref = base.get(key, {})
            if "peak_allocated" not in got or "peak_allocated" not in ref:
                table.setdefault(key, {})[release] = got.get("error", "no reference")
                continue
            table.setdefault(key, {})[release] = {
                f"{what}_vs_{reference}": round(got[f"peak_{what}"] / ref[f"peak_{what}"] - 1, 5)
                for what in ("allocated", "reserved")
            }
    return table


def summary(report: dict) -> str:
    """The results as a Markdown table: tests, and the largest prediction difference."""
    reference = report["reference"]
    rows = [
        f"| torch | tests passed / failed / skipped | predictions equal to {reference}'s "
        f"(allocated, reserved) | largest difference: allocated, reserved |",
        "|---|---|---|---|",
    ]
    for release, run in report["runs"].items():
        counts = run["tests"]["counts"]
        diffs = [row.get(release) for row in report["predictions_vs_reference"].values()]
        numeric = [d for d in diffs if isinstance(d, dict)]
        same = [
            sum(d[f"{what}_vs_{reference}"] == 0 for d in numeric)
            for what in ("allocated", "reserved")
        ]
        worst = [
            max((abs(d[f"{what}_vs_{reference}"]) for d in numeric), default=0.0)
            for what in ("allocated", "reserved")
        ]
        failed = len(diffs) - len(numeric)
        rows.append(
            f"| {run['predictions'].get('torch', release)} | {counts['passed']} / "
            f"{counts['failed']} / {counts['skipped']} | {same[0]} and {same[1]} of "
            f"{len(diffs)}{f' ({failed} failed)' if failed else ''} | {worst[0]:.2%}, "
            f"{worst[1]:.2%} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torch", nargs="+", default=["2.14.1=current", "2.6.0"])
    parser.add_argument("--venvs", default=str(Path.home() / ".cache" / "memfit-torch-matrix"))
    parser.add_argument("--out", default="bench/results/torch_matrix.json")
    parser.add_argument("--tests", nargs="+", default=["tests/trace"])
    parser.add_argument("--smoke", action="store_true", help="two tests, one small prediction")
    parser.add_argument(
        "--keep", action="store_true", help="keep the releases already in --out; add these"
    )
    parser.add_argument("--predict", help=argparse.SUPPRESS)
    parser.add_argument("--summary", action="store_true", help="print --out as a Markdown table")
    args = parser.parse_args()
    if args.summary:
        print(summary(json.loads(Path(args.out).read_text())))
        return
    if args.predict:
        print(json.dumps(predict_here(json.loads(args.predict))))
        return
    cases = SMOKE_CASES if args.smoke else CASES
    tests = SMOKE_TESTS if args.smoke else args.tests
    venvs = Path(args.venvs).expanduser()
    venvs.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: dict = {}
    if args.keep and out.exists():  # the releases run before, other than those given now
        runs = json.loads(out.read_text())["runs"]
    for item in args.torch:
        release, _, source = item.partition("=")
        python = _make_venv(release, source or "pypi", venvs)
        print(f"torch {release}: {python}", flush=True)
        runs[release] = {
            "tests": _run_tests(python, tests, venvs / f"tests-{release}"),
            "predictions": _predict(python, cases),
        }
        print(f"  tests {runs[release]['tests']['counts']}", flush=True)
        reference = next(iter(runs))
        report = {
            "what": "tests/trace and zoo predictions under each torch release",
            "python": sys.version.split()[0],
            "same_as_reference": {n: _installed(n) for n in SAME_AS_HERE},
            "reference": reference,
            "runs": runs,
            "predictions_vs_reference": _compare(runs, reference),
        }
        out.write_text(json.dumps(report, indent=1) + "\n")  # after each release: partial results
    print(f"wrote {out}")


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
