"""Reports: where the memory goes, as text, JSON and a self-contained HTML page with figures.

    memfit.report(profile, "report.html")                    # HTML (and PNGs with png_dir=)
    print(memfit.report.profile_text(profile))                # aligned tables, peak first
    snap = memfit.report.load_snapshot("snapshot.pickle")     # safe: plain data only
    profile, trace = memfit.report.snapshot_profile(snap)     # a real run as a MemoryProfile
    frag = memfit.report.analyze_fragmentation(trace)         # floor, ideal packing, reserved

Renderers return strings, dicts and figures; only the command line prints.
"""

from __future__ import annotations

from memfit.plan.frontier import FrontierPoint, pareto
from memfit.report.build import compare_report, profile_views, report, report_html
from memfit.report.compare import ProfileDiff, diff_profiles, diff_text, load_comparable
from memfit.report.text import Verdict, fragmentation_text, profile_summary, profile_text, verdict
from memfit.snapshot.fragmentation import Fragmentation, SettingPrediction
from memfit.snapshot.fragmentation import analyze as analyze_fragmentation
from memfit.snapshot.load import load_snapshot
from memfit.snapshot.packing import Interval, Packing, live_peak, pack
from memfit.snapshot.profile import snapshot_profile
from memfit.verbs import make_callable

__all__ = [
    "report",
    "report_html",
    "profile_views",
    "compare_report",
    "profile_text",
    "profile_summary",
    "fragmentation_text",
    "verdict",
    "Verdict",
    "FrontierPoint",
    "pareto",
    "load_snapshot",
    "snapshot_profile",
    "analyze_fragmentation",
    "Fragmentation",
    "SettingPrediction",
    "Interval",
    "Packing",
    "pack",
    "live_peak",
    "ProfileDiff",
    "diff_profiles",
    "diff_text",
    "load_comparable",
]

make_callable(__name__, report)
