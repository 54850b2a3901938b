"""The HTML report: self-contained, every view drawn, small for long timelines, no global state."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import matplotlib
import pytest

from memfit.errors import MemfitError
from memfit.plan.frontier import pareto
from memfit.profile import Phase, TimelineEvent
from memfit.report import FrontierPoint, report
from memfit.snapshot.fragmentation import analyze
from memfit.snapshot.profile import snapshot_profile
from memfit.snapshot.thin import thin_indices

GiB = 2**30
FRONTIER = [
    FrontierPoint("no technique", 12 * GiB, 0.40),
    FrontierPoint("checkpoint all", 6 * GiB, 0.52, measured=True),
    FrontierPoint("checkpoint half", 8 * GiB, 0.46, chosen=True),
    FrontierPoint("offload optimizer", 7 * GiB, 0.70),
]


def _views(page: str) -> dict[str, str]:
    return dict(
        re.findall(r'<section class="view" id="view-([\w-]+)".*?>(.*?)</section>', page, re.S)
    )


def _assert_self_contained(page: str) -> None:
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert not re.search(r"url\((https?:)?//", page)


def test_profile_report_has_every_view(tmp_path: Path, make_profile) -> None:
    path = report(make_profile(), tmp_path / "r.html", budget=16 * GiB, frontier=FRONTIER)
    page = path.read_text()
    _assert_self_contained(page)
    views = _views(page)
    assert list(views) == ["breakdown", "timeline", "modules", "frontier"]
    assert all("<svg" in body for body in views.values())
    assert "FITS" in page and "budget 16.00 GiB" in page


def test_budget_without_plans_says_so_instead_of_inventing_them(tmp_path, make_profile) -> None:
    page = report(make_profile(), tmp_path / "r.html", budget=16 * GiB).read_text()
    frontier = _views(page)["frontier"]
    assert "<svg" not in frontier and "memfit plan" in frontier


def test_snapshot_report_adds_fragmentation(tmp_path: Path, make_snapshot) -> None:
    profile, trace = snapshot_profile(make_snapshot(), name="run.pickle")
    page = report(profile, tmp_path / "s.html", fragmentation=analyze(trace)).read_text()
    _assert_self_contained(page)
    assert list(_views(page)) == ["breakdown", "timeline", "modules", "fragmentation"]
    assert "recorded run" in page


@pytest.mark.slow
def test_long_timelines_stay_small(tmp_path: Path, make_profile) -> None:
    events = tuple(
        TimelineEvent(
            index=i,
            phase=Phase.FORWARD if i < 150_000 else Phase.BACKWARD,
            allocated=(i % 977) * 2**20,
            reserved=GiB,
        )
        for i in range(200_000)
    )
    profile = dataclasses.replace(make_profile(), timeline=events)
    path = report(profile, tmp_path / "big.html")
    assert path.stat().st_size < 600_000


@pytest.mark.slow
def test_pngs_one_per_view(tmp_path: Path, make_profile) -> None:
    report(make_profile(), tmp_path / "r.html", frontier=FRONTIER, png_dir=tmp_path / "png")
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [
        "breakdown.png",
        "frontier.png",
        "modules.png",
        "timeline.png",
    ]
    assert (tmp_path / "png" / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_rendering_leaves_matplotlib_settings_alone(tmp_path: Path, make_profile) -> None:
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    report(make_profile(), tmp_path / "r.html")
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend


def test_report_refuses_what_is_not_a_profile(tmp_path: Path) -> None:
    with pytest.raises(MemfitError, match="give a MemoryProfile"):
        report({"peak": 3}, tmp_path / "r.html")


def test_frontier_points_and_pareto() -> None:
    assert [p.label for p in pareto(FRONTIER)] == [
        "checkpoint all",
        "checkpoint half",
        "no technique",
    ]
    with pytest.raises(MemfitError, match="2 chosen plans"):
        report.__globals__["check_points"]([FRONTIER[2], FRONTIER[2]])
    assert FrontierPoint.from_dict(FRONTIER[1].to_dict()) == FRONTIER[1]


def test_thinning_keeps_extremes_and_boundaries() -> None:
    values = [0] * 10_000
    values[4321] = 99
    values[777] = -5
    kept = thin_indices(values, 100, keep=[5000])
    assert {0, 9999, 4321, 777, 5000} <= set(kept.tolist())
    assert len(kept) <= 105


def test_the_package_is_the_report_function(tmp_path: Path, make_profile) -> None:
    import memfit.report

    path = memfit.report(make_profile(), tmp_path / "r.html")
    assert path.exists() and callable(memfit.report)
    assert memfit.report.profile_text is not None  # still a package
