"""The reports as a person sees them: opened in headless Chromium, every figure drawn.

Needs a Chromium binary (Debian's ``chromium`` package; ``.ci/run`` installs it) and the
``playwright`` Python package, which drives the system browser (no browser download). Skipped only
where no Chromium exists. Screenshots of each view go to a temporary folder, and to
``docs/images/`` when ``MEMFIT_UPDATE_SCREENSHOTS=1`` is set (to refresh the user guide).
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from memfit.report import FrontierPoint, analyze_fragmentation, report, snapshot_profile
from memfit.report.build import compare_report
from memfit.report.compare import diff_profiles

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium browser on this machine")

GiB = 2**30
DOCS = Path(__file__).resolve().parents[2] / "docs" / "images"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # Chromium is here, so this test must run: say what is missing
        pytest.fail(
            "Chromium is installed but the playwright package is not: pip install playwright"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def _pages(tmp_path: Path, make_profile, make_snapshot) -> dict[str, Path]:
    profile = make_profile()
    frontier = [  # as crowded as a planner's: 12 screened points, traced ones, anchors
        FrontierPoint("unmodified", 12 * GiB, 0.400),
        FrontierPoint("HF full checkpointing", 6 * GiB, 0.520, measured=True),
        FrontierPoint("memfit full checkpointing", int(6.1 * GiB), 0.515, measured=True),
        FrontierPoint("fused GELU + chunked loss x4 (traced)", int(7.9 * GiB), 0.43, chosen=True),
        FrontierPoint("offload optimizer state", 7 * GiB, 0.70),
        *[
            FrontierPoint(f"checkpoint {k} of 12 blocks", int((12 - 0.5 * k) * GiB), 0.4 + 0.01 * k)
            for k in range(1, 11)
        ],
    ]
    snap = tmp_path / "run.pickle"
    snap.write_bytes(pickle.dumps(make_snapshot(metadata=True, steps=3)))
    measured, trace = snapshot_profile(make_snapshot(metadata=True, steps=3), name=snap.name)
    smaller = make_profile(timeline_points=300)
    return {
        "estimate": report(profile, tmp_path / "estimate.html", budget=8 * GiB, frontier=frontier),
        "snapshot": report(
            measured, tmp_path / "snapshot.html", fragmentation=analyze_fragmentation(trace)
        ),
        "compare": compare_report(
            diff_profiles(profile, smaller, ("a.json", "b.json")), tmp_path / "compare.html"
        ),
    }


_BOXES = """(s, sel) => [...s.querySelectorAll(sel)].map(e => {
    const r = e.getBoundingClientRect();
    return [r.left, r.top, r.right, r.bottom];
})"""


def _overlap(a, b) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, width) * max(0.0, height)


def _check_layout(page: str, key: str, svg) -> None:
    """What a reader sees: names that do not cover each other, legends off the data, and the
    budget drawn where there is one."""
    axes = svg.evaluate(_BOXES, '[id^="patch_2"]')[:1]  # the axes background
    legends = svg.evaluate(_BOXES, '[id^="legend"]')
    for legend in legends:
        for area in axes:
            assert _overlap(legend, area) < 1.0, (page, key, "legend on the data", legend, area)
    if key == "frontier":
        names = svg.evaluate(_BOXES, '[id="frontier-label"]')
        names = [b for b in names if b[2] > b[0]]
        assert 3 <= len(names) <= 4, names  # the chosen plan, two anchors, unmodified
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                assert _overlap(a, b) < 1.0, (page, "names overlap", a, b)
        assert svg.evaluate(_BOXES, '[id="budget"]'), "the budget is not drawn"


def test_reports_render_in_chromium(browser, tmp_path: Path, make_profile, make_snapshot) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    seen_views = []
    for name, path in _pages(tmp_path, make_profile, make_snapshot).items():
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        errors: list[str] = []
        fetched: list[str] = []
        page.on("console", lambda m, e=errors: m.type == "error" and e.append(m.text))
        page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
        page.on("request", lambda r, f=fetched: r.url.startswith("file:") or f.append(r.url))
        page.goto(path.as_uri(), wait_until="load")
        assert errors == [], f"{name}: console errors {errors}"
        assert fetched == [], f"{name}: the page asked the network for {fetched}"
        for section in page.query_selector_all("section.view"):
            key = section.get_attribute("data-view")
            svg = section.query_selector("figure svg")
            if svg is None:  # a view without data must say why
                assert section.query_selector("p.note").inner_text().strip(), key
            else:
                box = svg.bounding_box()
                assert box and box["width"] > 300 and box["height"] > 100, (key, box)
                drawn = svg.evaluate("s => s.querySelectorAll('path, rect, text').length")
                assert drawn > 12, (key, drawn)
                _check_layout(name, key, svg)
            section.screenshot(path=str(shots / f"{name}-{key}.png"))
            seen_views.append(f"{name}-{key}")
        page.screenshot(path=str(shots / f"{name}-page.png"), full_page=True)
        page.close()
    assert {
        "estimate-breakdown",
        "estimate-timeline",
        "estimate-modules",
        "estimate-frontier",
        "snapshot-fragmentation",
        "compare-compare-timeline",
    } <= set(seen_views)
    if os.environ.get("MEMFIT_UPDATE_SCREENSHOTS"):
        DOCS.mkdir(parents=True, exist_ok=True)
        for shot in shots.iterdir():
            shutil.copyfile(shot, DOCS / shot.name)
