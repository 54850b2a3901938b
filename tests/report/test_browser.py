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
    frontier = [
        FrontierPoint("no technique", 12 * GiB, 0.40),
        FrontierPoint("checkpoint every block", 6 * GiB, 0.52, measured=True),
        FrontierPoint("checkpoint half the blocks", 8 * GiB, 0.46, chosen=True),
        FrontierPoint("offload optimizer state", 7 * GiB, 0.70),
    ]
    snap = tmp_path / "run.pickle"
    snap.write_bytes(pickle.dumps(make_snapshot(metadata=True, steps=3)))
    measured, trace = snapshot_profile(make_snapshot(metadata=True, steps=3), name=snap.name)
    smaller = make_profile(timeline_points=300)
    return {
        "estimate": report(profile, tmp_path / "estimate.html", budget=16 * GiB, frontier=frontier),
        "snapshot": report(
            measured, tmp_path / "snapshot.html", fragmentation=analyze_fragmentation(trace)
        ),
        "compare": compare_report(
            diff_profiles(profile, smaller, ("a.json", "b.json")), tmp_path / "compare.html"
        ),
    }


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
                assert drawn > 20, (key, drawn)
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
