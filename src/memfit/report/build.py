"""Assemble a report: the views of a profile (and of a plan's frontier, or a snapshot's
fragmentation) into one HTML page, and optionally one PNG per view."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memfit.errors import InvalidInputError
from memfit.outputs import check_output_dir, check_output_file
from memfit.plan.frontier import FrontierPoint, check_points
from memfit.profile import Category, MemoryProfile
from memfit.report import mpl
from memfit.report.figures import breakdown_figure, timeline_figure
from memfit.report.figures_compare import (
    compare_categories_figure,
    compare_modules_figure,
    compare_timeline_figure,
)
from memfit.report.figures_modules import modules_figure
from memfit.report.figures_snapshot import fragmentation_figure
from memfit.report.frontier import frontier_figure
from memfit.report.html import Stat, View, render_page
from memfit.report.text import headline, verdict
from memfit.snapshot.fragmentation import Fragmentation
from memfit.units import format_bytes, parse_budget

__all__ = ["report", "profile_views", "report_html", "as_profile"]


def as_profile(obj: Any) -> tuple[MemoryProfile, tuple[FrontierPoint, ...], int | None]:
    """A MemoryProfile, or a plan that carries one (``.profile``; ``.frontier``, ``.budget``)."""
    if isinstance(obj, MemoryProfile):
        return obj, (), None
    profile = getattr(obj, "profile", None)
    if isinstance(profile, MemoryProfile):
        points = tuple(getattr(obj, "frontier", ()) or ())
        budget = getattr(obj, "budget", None)
        return profile, points, int(budget) if budget else None
    raise InvalidInputError(
        f"cannot report on a {type(obj).__name__}; give a MemoryProfile (memfit.estimate or "
        f"memfit.measure) or a Plan (memfit.plan)"
    )


def profile_views(
    profile: MemoryProfile,
    *,
    budget: int | None = None,
    frontier: Sequence[FrontierPoint] = (),
    fragmentation: Fragmentation | None = None,
) -> list[View]:
    """The sections of a report, in reading order."""
    run = "recorded run" if profile.source == "snapshot" else "step"
    views = [
        View(
            "breakdown",
            "Where the peak goes",
            breakdown_figure(profile, budget=budget),
            caption="Everything on the GPU at the moment of the peak, by what it holds. The top "
            "bar sets it against the device (and the budget); the bottom bar zooms in on it. "
            "Hatched: memory the caching allocator keeps reserved but holds no tensor.",
            table=_category_table(profile),
        ),
        View(
            "timeline",
            "Live memory over the " + run,
            timeline_figure(
                profile,
                budget=budget,
                title="Live memory over the " + run,
            ),
            caption="Allocated bytes (blue) and reserved bytes (dashed) after each allocation or "
            "free, with forward, backward and optimizer phases shaded. The box tells what is "
            "alive at the peak.",
            note="This profile has no timeline (estimate it with a timeline, or load a snapshot).",
        ),
        View(
            "modules",
            "Activation memory per module",
            modules_figure(profile),
            caption="What each module keeps alive for backward when forward ends (not at the "
            "peak, which may come later), counting only its own allocations (children are "
            "listed separately); xN: N repeated modules with equal figures, each holding the "
            "bar's bytes. Checkpointing the top entries saves the most.",
            note=(
                "This snapshot was recorded without Python stacks or memfit metadata, so no "
                "allocation can be put to a module. Record with torch.cuda.memory."
                "_record_memory_history(stacks='python') for source lines, or stamp module "
                "names as bench/snapshot_fixture.py does."
                if profile.source == "snapshot"
                else "This profile has no per-module activation memory."
            ),
        ),
    ]
    if fragmentation is not None:
        views.append(
            View(
                "fragmentation",
                "Fragmentation",
                fragmentation_figure(fragmentation),
                caption="The floor is the most bytes alive at once. The ideal packing "
                "places every allocation of the run knowing all lifetimes in advance: "
                "no allocator can beat it. Reserved is what PyTorch actually held. "
                "Advice: " + fragmentation.advice() + ".",
            )
        )
    if frontier:
        views.append(
            View(
                "frontier",
                "Plans: memory against speed",
                frontier_figure(check_points(frontier), budget=budget),
                caption="Each point is a plan; the line joins those that no other plan "
                "beats on both memory and time. Star: the chosen plan; filled: "
                "measured on a GPU (anchors); hollow: predicted. Named: the chosen plan, "
                "the anchors and the unmodified step; every plan is in the table."
                + (" Dashed: the budget; shaded: past it." if budget is not None else ""),
                table=_frontier_table(frontier),
            )
        )
    elif budget is not None:
        views.append(
            View(
                "frontier",
                "Plans: memory against speed",
                None,
                note=f"No plans to show: the budget {format_bytes(budget)} is drawn in "
                "the views above. Run `memfit plan MODEL --budget ...` for the "
                "frontier of plans that meet it.",
            )
        )
    return views


def _frontier_table(points: Sequence[FrontierPoint]) -> str:
    rows = "".join(
        f"<tr><td>{'* ' if p.chosen else ''}{html.escape(p.label)}</td>"
        f"<td>{format_bytes(p.peak_reserved)}</td><td>{p.step_time_s * 1e3:.1f} ms</td>"
        f"<td>{'measured' if p.measured else 'predicted'}</td></tr>"
        for p in sorted(points, key=lambda q: q.peak_reserved)
    )
    return (
        "<details><summary>Every plan</summary><table><tr><th>plan (* chosen)</th>"
        "<th>peak reserved</th><th>step time</th><th></th></tr>" + rows + "</table></details>"
    )


def _category_table(profile: MemoryProfile) -> str:
    rows = []
    for c in Category:
        value = profile.by_category.get(c, 0)
        if value:
            share = 100 * value / max(1, profile.peak_allocated)
            rows.append(
                f"<tr><td>{c.value}</td><td>{format_bytes(value)}</td><td>{share:.1f}%</td></tr>"
            )
    rows.append(
        f"<tr><td><b>allocated</b></td><td><b>{format_bytes(profile.peak_allocated)}</b>"
        "</td><td></td></tr>"
    )
    rows.append(
        f"<tr><td>reserved</td><td>{format_bytes(profile.peak_reserved)}</td><td></td></tr>"
    )
    return (
        "<details><summary>Numbers</summary><table><tr><th>at the peak</th><th>bytes</th>"
        "<th>share of allocated</th></tr>" + "".join(rows) + "</table></details>"
    )


def report_html(profile: MemoryProfile, views: Sequence[View], *, budget: int | None = None) -> str:
    """The HTML page for a profile and its views."""
    v = verdict(profile, budget)
    tone = "" if v.fits is None else ("good" if v.fits else "bad")
    stats = [
        Stat("peak reserved", format_bytes(profile.peak_reserved), tone),
        Stat("peak allocated", format_bytes(profile.peak_allocated)),
    ]
    if profile.device_memory:
        stats.append(Stat(f"{profile.device} memory", format_bytes(profile.device_memory)))
    if budget:
        stats.append(Stat("budget", format_bytes(budget)))
    if profile.step_time_s:
        stats.append(Stat("step time", f"{profile.step_time_s * 1e3:.1f} ms"))
    return render_page(
        title=f"memfit report: {profile.model}",
        subtitle=headline(profile),
        stats=stats,
        verdict=(v.text(), tone),
        views=views,
        warnings=profile.warnings,
    )


def report(
    profile_or_plan: Any,
    path: str | Path,
    *,
    budget: int | str | None = None,
    frontier: Sequence[FrontierPoint] = (),
    fragmentation: Fragmentation | None = None,
    png_dir: str | Path | None = None,
) -> Path:
    """Write a self-contained HTML report (and, with ``png_dir``, one PNG per view).

    Args:
        profile_or_plan: a MemoryProfile, or a plan with ``.profile`` (and ``.frontier``).
        path: where to write the HTML file.
        budget: a memory budget (bytes, ``"16GiB"`` or a fraction of the profile's device),
            drawn as a line and used for the verdict.
        frontier: plans to draw (memory against step time).
        fragmentation: for a recorded run, its fragmentation analysis.
        png_dir: a folder to write ``<view>.png`` files into.

    Returns:
        The path of the HTML file.

    Example:
        >>> memfit.report(memfit.estimate(model, batch), "report.html")  # doctest: +SKIP
    """
    profile, plan_points, plan_budget = as_profile(profile_or_plan)
    out = check_output_file(path, option="path")
    if png_dir is not None:
        check_output_dir(png_dir, option="png_dir")
    limit = plan_budget  # bytes, or "16GiB" / "0.8" of the profile's device:
    if budget is not None:
        limit = parse_budget(budget, of=profile.device_memory or None, device=profile.device)
    views = profile_views(
        profile, budget=limit, frontier=tuple(frontier) or plan_points, fragmentation=fragmentation
    )
    out.write_text(report_html(profile, views, budget=limit), encoding="utf-8")
    if png_dir is not None:
        write_pngs(views, png_dir)
    return out


def write_pngs(views: Sequence[View], folder: str | Path) -> list[Path]:
    """Save each view's figure as ``folder/<key>.png``; returns the files written."""
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    return [
        mpl.save_png(v.figure, target / f"{html.escape(v.key)}.png")
        for v in views
        if v.figure is not None
    ]


def compare_report(diff: Any, path: str | Path, *, png_dir: str | Path | None = None) -> Path:
    """Write the HTML comparison of two runs (a ``compare.ProfileDiff``)."""
    out = check_output_file(path, option="path")
    if png_dir is not None:
        check_output_dir(png_dir, option="png_dir")
    a, b = diff.a, diff.b
    name_a, name_b = diff.names
    views = [
        View(
            "compare-timeline",
            "Both runs on one axis",
            compare_timeline_figure(diff),
            caption="Live memory of each run over its step; each run is stretched to the same "
            "length so phases line up. Dots mark the peaks.",
            note="Neither profile has a timeline.",
        ),
        View("compare-categories", "At the peak, by category", compare_categories_figure(diff)),
        View(
            "compare-modules",
            "What grew, module by module",
            compare_modules_figure(diff),
            caption="Change in the memory each module owns or causes (parameters, gradients "
            "and its own activations), largest changes first.",
            note="No module changed (or the profiles have no per-module data).",
        ),
    ]
    change = b.peak_reserved - a.peak_reserved
    sign = "+" if change >= 0 else "-"
    html_text = render_page(
        title=f"memfit compare: {name_a} vs {name_b}",
        subtitle=f"A: {headline(a)}  |  B: {headline(b)}",
        stats=[
            Stat(f"A peak reserved ({name_a})", format_bytes(a.peak_reserved)),
            Stat(f"B peak reserved ({name_b})", format_bytes(b.peak_reserved)),
            Stat("B - A", f"{sign}{format_bytes(abs(change))}", "bad" if change > 0 else "good"),
        ],
        verdict=(f"B needs {sign}{format_bytes(abs(change))} reserved memory compared with A", ""),
        views=views,
    )
    out.write_text(html_text, encoding="utf-8")
    if png_dir is not None:
        write_pngs(views, png_dir)
    return out
