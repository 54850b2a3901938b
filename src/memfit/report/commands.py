"""``memfit report`` and ``memfit compare``: Click commands, wired into ``memfit.cli.main``.

The commands parse, call the report API, and print; every number they print comes from the
renderers in this package. A user mistake raises MemfitError, which ``memfit.cli.main`` turns
into a message and exit code 2.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from memfit.devices import DEFAULT_DEVICE, get_device
from memfit.errors import BudgetInfeasibleError, InvalidInputError
from memfit.outputs import check_output_dir, check_output_file
from memfit.plan.frontier import FrontierPoint
from memfit.profile import MemoryProfile
from memfit.report import build
from memfit.report.compare import diff_profiles, diff_text, load_comparable
from memfit.report.progress import Progress
from memfit.report.text import fragmentation_text, profile_summary, profile_text
from memfit.snapshot.fragmentation import Fragmentation, analyze
from memfit.snapshot.load import load_snapshot
from memfit.snapshot.profile import snapshot_profile
from memfit.units import format_bytes, parse_budget

__all__ = ["report", "compare"]

_FORMATS = click.Choice(["table", "json"])


def _is_snapshot(path: str) -> bool:
    file = Path(path)
    if file.suffix in (".pickle", ".pkl"):
        return True
    if file.suffix == ".json" or not file.is_file():
        return False
    with file.open("rb") as handle:
        return handle.read(1) == b"\x80"  # the pickle protocol opcode


def _load_run(
    path: str, *, device: str | None, device_index: int | None, show: bool
) -> tuple[MemoryProfile, Any]:
    """A profile from a JSON file, or a profile and its trace from a snapshot."""
    if not _is_snapshot(path):
        return load_comparable(path), None
    spec = get_device(device) if device else None
    with Progress(f"reading {Path(path).name}", enabled=show):
        profile, trace = snapshot_profile(
            load_snapshot(path), name=Path(path).name, device=spec, device_index=device_index
        )
    return profile, trace


def _step_options(options: dict[str, Any]) -> dict[str, Any]:
    """The command's options as keyword arguments of ``memfit.estimate`` and ``memfit.plan``."""
    return {
        "optimizer": options["optimizer"],
        "precision": options["precision"],
        "device": options["device"] or DEFAULT_DEVICE,
        "batch_size": options["batch_size"],
        "seq_len": options["seq_len"],
    }


def _estimate(model: str, options: dict[str, Any], show: bool) -> MemoryProfile:
    from memfit.trace.estimate import estimate  # imports torch: only when it runs

    with Progress(f"estimating {model}", enabled=show) as bar:
        return estimate(model, None, **_step_options(options), progress=bar.set_stage)


def _plan_frontier(model: str, budget: str, options: dict[str, Any], show: bool) -> Any:
    """The planner's frontier for ``budget``, or () with a note when no plan meets it."""
    from memfit.plan.search import plan as plan_fn  # imports torch: only when it runs

    with Progress(f"planning {model} for {budget}", enabled=show) as bar:
        try:
            plan = plan_fn(
                model, None, budget=budget, **_step_options(options), progress=bar.set_stage
            )
        except BudgetInfeasibleError as error:
            click.echo(f"note: no plan drawn: {error}", err=True)
            return ()
    return plan.frontier


def _saved_plan(path: str) -> tuple[tuple[FrontierPoint, ...], int | None]:
    """The frontier and budget inside a plan JSON file (``memfit plan --out``); none for a
    profile."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return (), None  # _load_run has said what is wrong with the file
    if not isinstance(data, dict) or "techniques" not in data:
        return (), None
    from memfit.plan.plan import Plan  # imports torch: only when it runs

    plan = Plan.from_dict(data)
    return plan.frontier, plan.budget or None


def _frontier(path: str | None) -> tuple[FrontierPoint, ...]:
    if path is None:
        return ()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise InvalidInputError(
            f"--frontier {path!r} is not a readable JSON file ({error}); give a JSON list of "
            f"plan points or a plan written by `memfit plan --out plan.json`"
        ) from None
    points = data.get("frontier", data) if isinstance(data, dict) else data
    if not isinstance(points, list):
        raise InvalidInputError(
            f"--frontier {path!r} must hold a list of plan points, each with label, "
            f"peak_reserved (bytes) and step_time_s; or a plan written by `memfit plan --out`"
        )
    return tuple(
        FrontierPoint.from_dict(p, where=f"--frontier {path!r} item {i}")
        for i, p in enumerate(points)
    )


@click.command("report")
@click.argument("source", required=False)
@click.option("--snapshot", help="A PyTorch memory snapshot (torch.cuda.memory._dump_snapshot).")
@click.option(
    "--out", "-o", default="memfit-report.html", show_default=True, help="The HTML file to write."
)
@click.option("--png", "png_dir", help="Also write each figure as DIR/<view>.png.")
@click.option(
    "--device", help="Target GPU (see `memfit devices`); for a snapshot, the GPU it ran on."
)
@click.option(
    "--budget",
    help="A memory budget, e.g. 16GiB or 0.8 (of the device); for a model, also the plans "
    "that would meet it.",
)
@click.option("--frontier", "frontier_path", help="JSON list of plans to draw (from the planner).")
@click.option("--batch-size", type=int, help="Batch size for a zoo model.")
@click.option("--seq-len", type=int, help="Sequence length for a zoo model.")
@click.option("--optimizer", default="adamw", show_default=True)
@click.option("--precision", default="bf16-mixed", show_default=True)
@click.option("--device-index", type=int, help="Which CUDA device of a snapshot to explain.")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; just write the files.")
def report(
    source: str | None,
    snapshot: str | None,
    out: str,
    png_dir: str | None,
    device: str | None,
    budget: str | None,
    frontier_path: str | None,
    batch_size: int | None,
    seq_len: int | None,
    optimizer: str,
    precision: str,
    device_index: int | None,
    fmt: str,
    quiet: bool,
) -> None:
    """Write an HTML report of where the memory goes.

    SOURCE is a zoo model (gpt2, llama-1b, ...), a profile or plan JSON file, or (like
    --snapshot) a memory snapshot pickle of a real run.
    """
    show = not quiet and fmt == "table"
    frag: Fragmentation | None = None
    check_output_file(out)
    if png_dir is not None:
        check_output_dir(png_dir)
    frontier = _frontier(frontier_path)
    run = snapshot or source
    if run is None:
        raise InvalidInputError(
            "nothing to report on: give a model (`memfit report gpt2`), a profile JSON file, "
            "or --snapshot snapshot.pickle"
        )
    limit: int | None = None
    if snapshot or run.endswith(".json") or _is_snapshot(run):
        profile, trace = _load_run(run, device=device, device_index=device_index, show=show)
        if budget:
            limit = parse_budget(budget, of=profile.device_memory or None, device=profile.device)
        if trace is None:  # a plan's own frontier and budget, unless given
            saved, saved_budget = _saved_plan(run)
            frontier = frontier or saved
            limit = limit if limit is not None else saved_budget
        if trace is not None:
            with Progress(
                f"packing {len(trace.allocations):,} allocations",
                total=len(trace.allocations) * 6,
                enabled=show,
            ) as bar:
                frag = analyze(trace, progress=bar.advance)
    else:
        options = {
            "batch_size": batch_size,
            "seq_len": seq_len,
            "optimizer": optimizer,
            "precision": precision,
            "device": device,
        }
        spec = get_device(device or DEFAULT_DEVICE)
        if budget:  # before the work: a budget that cannot be read fails at once
            limit = parse_budget(budget, of=spec.memory_bytes, device=spec.name)
        profile = _estimate(run, options, show)
        if budget and not frontier:  # the plans that would meet it, the fastest marked
            frontier = _plan_frontier(run, budget, options, show)
    with Progress("drawing the report", enabled=show):
        path = build.report(
            profile,
            out,
            budget=limit,
            frontier=frontier,
            fragmentation=frag,
            png_dir=png_dir,
        )
    if quiet:
        return
    if fmt == "json":
        summary = profile_summary(profile, budget=limit)
        summary["fragmentation"] = frag.to_dict() if frag else None
        summary["report"] = str(path)
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(profile_text(profile, budget=limit))
    if frag is not None:
        click.echo("\n" + fragmentation_text(frag))
    click.echo(
        f"\nwrote {path} ({format_bytes(path.stat().st_size)})"
        + (f" and PNGs in {png_dir}" if png_dir else "")
    )


@click.command("compare")
@click.argument("runs", nargs=-1)
@click.option(
    "--out",
    "-o",
    default="memfit-compare.html",
    show_default=True,
    help="The HTML file to write ('' for none).",
)
@click.option("--png", "png_dir", help="Also write each figure as DIR/<view>.png.")
@click.option("--top", default=15, show_default=True, help="How many modules to list.")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; just write the files.")
def compare(
    runs: Sequence[str], out: str, png_dir: str | None, top: int, fmt: str, quiet: bool
) -> None:
    """Put two runs on one axis: RUNS are two profile or plan JSON files, or snapshots."""
    show = not quiet and fmt == "table"
    if len(runs) != 2:
        raise InvalidInputError(
            f"compare takes two runs (profile or plan JSON files, or snapshots), got "
            f"{len(runs)}: {list(runs)}; e.g. memfit compare before.json after.json"
        )
    if out:
        check_output_file(out)
    if png_dir is not None:
        check_output_dir(png_dir)
    if top < 1:
        raise InvalidInputError(f"--top {top} must be 1 or more (how many modules to list)")
    a = _load_run(runs[0], device=None, device_index=None, show=show)[0]
    b = _load_run(runs[1], device=None, device_index=None, show=show)[0]
    diff = diff_profiles(a, b, (Path(runs[0]).name, Path(runs[1]).name))
    if out:
        build.compare_report(diff, out, png_dir=png_dir)
    if quiet:
        return
    if fmt == "json":
        click.echo(json.dumps({**diff.to_dict(), "report": out or None}, indent=2))
        return
    click.echo(diff_text(diff, top=top))
    if out:
        click.echo(f"\nwrote {out}")
