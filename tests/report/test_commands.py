"""`memfit report` and `memfit compare` through Click, as a user runs them."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

from memfit.errors import MemfitError
from memfit.report.commands import compare, report

GiB = 2**30


@pytest.fixture
def files(tmp_path: Path, make_profile, make_snapshot) -> dict[str, Path]:
    a = make_profile()
    bigger = tuple(
        dataclasses.replace(m, self_activation_bytes=m.self_activation_bytes * 2)
        if m.fqn == "layers.3.mlp"
        else m
        for m in a.modules
    )
    b = dataclasses.replace(a, peak_reserved=a.peak_reserved + GiB, modules=bigger)
    paths = {
        "a": tmp_path / "a.json",
        "b": tmp_path / "b.json",
        "snap": tmp_path / "run.pickle",
        "evil": tmp_path / "evil.pickle",
    }
    paths["a"].write_text(a.to_json())
    paths["b"].write_text(b.to_json())
    paths["snap"].write_bytes(pickle.dumps(make_snapshot()))

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    paths["evil"].write_bytes(pickle.dumps(Evil()))
    return paths


def test_report_from_a_profile_json(tmp_path: Path, files) -> None:
    out = tmp_path / "r.html"
    result = CliRunner().invoke(report, [str(files["a"]), "--out", str(out), "--budget", "16GiB"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].startswith("peak reserved") and lines[3].startswith("verdict         FITS")
    assert f"wrote {out}" in result.output
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_report_from_a_snapshot_with_pngs(tmp_path: Path, files) -> None:
    out, png = tmp_path / "s.html", tmp_path / "png"
    result = CliRunner().invoke(
        report,
        [
            "--snapshot",
            str(files["snap"]),
            "--out",
            str(out),
            "--png",
            str(png),
            "--device",
            "rtx4090",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "live peak (the floor)" in result.output and "advice:" in result.output
    assert (png / "fragmentation.png").exists()


def test_report_json_and_quiet(tmp_path: Path, files) -> None:
    result = CliRunner().invoke(
        report, [str(files["snap"]), "--out", str(tmp_path / "s.html"), "--format", "json"]
    )
    data = json.loads(result.output)
    assert data["peak_allocated_bytes"] == 56 * 2**20 + 512
    assert data["fragmentation"]["ideal"] >= data["fragmentation"]["live_peak"]
    quiet = CliRunner().invoke(report, [str(files["a"]), "-q", "--out", str(tmp_path / "q.html")])
    assert quiet.exit_code == 0 and quiet.output == ""


def test_report_refuses_a_malicious_snapshot(tmp_path: Path, files) -> None:
    result = CliRunner().invoke(
        report, ["--snapshot", str(files["evil"]), "--out", str(tmp_path / "x.html")]
    )
    assert isinstance(result.exception, MemfitError)
    assert "not a memory snapshot or is unsafe" in str(result.exception)
    assert "pwned" not in result.output
    assert not (tmp_path / "x.html").exists()


def test_report_needs_something_to_report_on() -> None:
    result = CliRunner().invoke(report, [])
    assert isinstance(result.exception, MemfitError)
    assert "nothing to report on" in str(result.exception)


def test_compare_two_profiles(tmp_path: Path, files) -> None:
    out = tmp_path / "c.html"
    result = CliRunner().invoke(compare, [str(files["a"]), str(files["b"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "peak reserved" in result.output and "+1.00 GiB" in result.output
    first_module = result.output.split("modules that changed most")[1].splitlines()[3]
    assert first_module.startswith("layers.3.mlp")
    page = out.read_text()
    assert page.count("<svg") == 3


def test_compare_a_profile_with_a_snapshot_as_json(tmp_path: Path, files) -> None:
    result = CliRunner().invoke(
        compare, [str(files["a"]), str(files["snap"]), "--out", "", "--format", "json"]
    )
    data = json.loads(result.output)
    assert data["b"] == "run.pickle" and data["report"] is None
    assert data["peak_allocated_bytes"][1] == 56 * 2**20 + 512


def test_report_draws_a_frontier_file(tmp_path: Path, files) -> None:
    frontier = tmp_path / "plans.json"
    frontier.write_text(
        json.dumps(
            [
                {"label": "none", "peak_reserved": 12 * GiB, "step_time_s": 0.4},
                {
                    "label": "checkpoint",
                    "peak_reserved": 7 * GiB,
                    "step_time_s": 0.5,
                    "chosen": True,
                },
            ]
        )
    )
    out = tmp_path / "f.html"
    result = CliRunner().invoke(
        report, [str(files["a"]), "--frontier", str(frontier), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'data-view="frontier"' in page and "chosen plan" in page  # the legend
    assert "<td>* checkpoint</td>" in page  # every plan in the table, the chosen one starred


@pytest.mark.slow
def test_report_estimates_a_zoo_model(tmp_path: Path) -> None:
    memfit = pytest.importorskip("memfit")
    if not hasattr(memfit, "estimate"):
        pytest.skip("memfit.estimate is not available")
    out = tmp_path / "gpt2.html"
    result = CliRunner().invoke(
        report,
        ["gpt2", "--batch-size", "1", "--seq-len", "64", "--device", "rtx4090", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("gpt2 on rtx4090")
    assert out.read_text().count("<svg") == 3


@pytest.mark.slow
def test_a_budget_draws_the_planners_frontier(tmp_path: Path, monkeypatch) -> None:
    from memfit.plan import search
    from memfit.plan.frontier import FrontierPoint
    from memfit.plan.plan import Plan

    asked = {}
    points = (
        FrontierPoint("unmodified", 12 * GiB, 0.050),
        FrontierPoint("full ckpt x12 (traced)", 7 * GiB, 0.061, chosen=True),
    )

    def fake_plan(model, batch, **options):
        asked.update(options, model=model)
        return Plan(techniques=(), frontier=points)

    monkeypatch.setattr(search, "plan", fake_plan)
    out = tmp_path / "r.html"
    args = ["gpt2", "--batch-size", "1", "--seq-len", "32", "--budget", "8GiB", "--out", str(out)]
    result = CliRunner().invoke(report, args)
    assert result.exit_code == 0, result.output
    assert asked["model"] == "gpt2" and asked["budget"] == "8GiB" and asked["seq_len"] == 32
    html = out.read_text()
    assert "full ckpt x12 (traced)" in html and "No plans to show" not in html


@pytest.mark.slow
def test_a_budget_no_plan_meets_is_a_note_not_a_failure(tmp_path: Path, monkeypatch) -> None:
    from memfit.errors import BudgetInfeasibleError
    from memfit.plan import search

    def infeasible(model, batch, **options):
        raise BudgetInfeasibleError("budget 1.00 GiB cannot be met: 3.00 GiB missing")

    monkeypatch.setattr(search, "plan", infeasible)
    out = tmp_path / "r.html"
    args = ["gpt2", "--batch-size", "1", "--seq-len", "32", "--budget", "1GiB", "--out", str(out)]
    result = CliRunner().invoke(report, args)
    assert result.exit_code == 0, result.output
    assert "note: no plan drawn: budget 1.00 GiB cannot be met" in result.output
    assert "No plans to show" in out.read_text()


def test_a_saved_plan_brings_its_frontier(tmp_path: Path, make_profile) -> None:
    from memfit.plan.frontier import FrontierPoint
    from memfit.plan.plan import Plan

    plan = Plan(
        techniques=(),
        budget=16 * GiB,
        profile=make_profile(),
        frontier=(FrontierPoint("micro-batch x2 (traced)", 9 * GiB, 0.07, chosen=True),),
    )
    path, out = tmp_path / "plan.json", tmp_path / "r.html"
    path.write_text(plan.to_json())
    result = CliRunner().invoke(report, [str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "micro-batch x2 (traced)" in out.read_text()
