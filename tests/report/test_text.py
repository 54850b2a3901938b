"""Terminal output: aligned tables, the peak and the verdict first."""

from __future__ import annotations

import dataclasses
import json

from memfit.report.tables import format_table
from memfit.report.text import profile_summary, profile_text, verdict

GiB = 2**30


def test_table_aligns_columns() -> None:
    text = format_table(("name", "bytes"), [("param", "1.00 GiB"), ("activation", "512 B")])
    assert text.splitlines() == [
        "name           bytes",
        "----------  --------",
        "param       1.00 GiB",
        "activation     512 B",
    ]


def test_peak_and_verdict_come_first(make_profile) -> None:
    lines = profile_text(make_profile()).splitlines()
    assert lines[0] == "gpt2 on h100-80gb (estimate, bf16-mixed, adamw, 8x1024)"
    assert lines[1] == "peak reserved   9.50 GiB"
    assert lines[2].startswith("peak allocated  9.00 GiB (forward in layers.11.mlp")
    assert lines[3].startswith("verdict         FITS: ")
    assert "activation           4.00 GiB   44.4%" in lines


def test_verdict_against_device_budget_and_nothing(make_profile) -> None:
    profile = make_profile()
    v = verdict(profile)
    assert v.fits and v.limit == 80 * GiB - 520 * 2**20
    over = verdict(profile, budget=8 * GiB)
    assert over.fits is False and over.text().startswith("DOES NOT FIT: 1.50 GiB over the budget")
    unknown = verdict(dataclasses.replace(profile, device_memory=0, outside_pytorch={}))
    assert unknown.fits is None and "--device" in unknown.text()


def test_json_summary_round_trips(make_profile) -> None:
    summary = json.loads(json.dumps(profile_summary(make_profile(), budget=8 * GiB)))
    assert summary["verdict"]["fits"] is False
    assert summary["verdict"]["headroom_bytes"] == 8 * GiB - (9 * GiB + GiB // 2)
    assert summary["profile"]["peak_reserved"] == 9 * GiB + GiB // 2
