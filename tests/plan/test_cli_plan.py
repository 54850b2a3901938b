"""``memfit plan`` through main([...]), as a user types it."""

from __future__ import annotations

import json

import pytest

from memfit.cli import main
from memfit.plan.plan import Plan

from .helpers import BATCH, BUILDER_FILE


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny_lm.py"
    path.write_text(BUILDER_FILE)
    return f"{path}:build"


def plan_args(model_file, budget):
    return ["plan", model_file, "--input", BATCH, "--budget", budget, "--device", "h100-80gb"]


@pytest.mark.slow
def test_plan_table(model_file, midway, midway_plan, capsys):
    assert main([*plan_args(model_file, f"{midway}B")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # the same plan as the API's for the same model, batch and budget
    assert lines[0] == f"plan            {midway_plan.label}"
    assert "peak reserved" in out and "step time" in out
    for technique in midway_plan.techniques:
        assert f"  - {technique!r}" in lines
    assert "alternatives weighed" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("plan  ") and "peak" in line)
    rows = lines[header + 2 :]
    assert len(rows) == len(midway_plan.frontier)
    assert sum(row.startswith("* ") for row in rows) == 1


@pytest.mark.slow
def test_plan_json_round_trips(model_file, midway, midway_plan, tmp_path, capsys):
    out_path = tmp_path / "plan.json"
    code = main([*plan_args(model_file, f"{midway}B"), "--format", "json", "--out", str(out_path)])
    assert code == 0
    text = capsys.readouterr().out
    plan = Plan.from_json(text)
    assert plan.techniques == midway_plan.techniques
    assert plan.budget == midway and plan.device == "h100-80gb"
    assert plan.profile.peak_reserved == midway_plan.profile.peak_reserved <= midway
    assert json.loads(out_path.read_text()) == json.loads(text)


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("lots", "budget 'lots' is not a size; give a number and a unit such as '24GiB'"),
        ("-3GB", "budget '-3GB' must be positive"),
        ("200GiB", "(200.00 GiB) is more than h100-80gb has"),
    ],
)
def test_bad_budget_exits_2_with_the_fix(model_file, budget, says, capsys):
    assert main(plan_args(model_file, budget)) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and says in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert captured.out == ""


def test_budget_is_required(model_file, capsys):
    assert main(["plan", model_file, "--input", BATCH]) == 2
    assert "Missing option '--budget'" in capsys.readouterr().err


@pytest.mark.slow
def test_allow_limits_the_techniques(model_file, midway, capsys):
    args = [*plan_args(model_file, f"{midway}B"), "--allow", "micro_batch", "--quiet"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().startswith("micro-batch x")
    assert main([*plan_args(model_file, f"{midway}B"), "--allow", "offload"]) == 2
    err = capsys.readouterr().err
    assert "['offload'] in allow; the planner chooses from: " in err and "Traceback" not in err


@pytest.mark.slow
def test_margin_reaches_the_planner(model_file, unmodified, capsys):
    """At exactly the unmodified step's predicted peak, only --margin 0 leaves it as it is."""
    at_peak = f"{unmodified.peak_reserved}B"
    assert main([*plan_args(model_file, at_peak), "--quiet", "--no-cache"]) == 0
    assert capsys.readouterr().out.strip() != "unmodified"
    assert main([*plan_args(model_file, at_peak), "--margin", "0", "--quiet", "--no-cache"]) == 0
    assert capsys.readouterr().out.strip() == "unmodified"


@pytest.mark.parametrize("margin", ["0.7", "-0.1"])
def test_bad_margin_exits_2_with_the_fix(model_file, margin, capsys):
    assert main([*plan_args(model_file, "1GiB"), "--margin", margin]) == 2
    err = capsys.readouterr().err
    assert f"margin={float(margin)!r} must be a fraction of the budget in [0, 0.5)" in err
    assert "Traceback" not in err


def test_plan_measure_without_a_gpu_says_so_before_planning(model_file, capsys, monkeypatch):
    import memfit.plan.measured as measured
    from memfit.errors import DeviceError

    def no_gpu():
        raise DeviceError("device 'cuda' asks for the local GPU, but torch sees none")

    monkeypatch.setattr(measured, "local_device", no_gpu)
    code = main([*plan_args(model_file, "1GiB"), "--measure", "2"])
    captured = capsys.readouterr()
    assert code != 0
    assert "torch sees none" in captured.err
    assert "Traceback" not in captured.err
    assert main([*plan_args(model_file, "1GiB"), "--measure", "-1"]) != 0
    assert "-1" in capsys.readouterr().err


def test_plan_text_shows_the_measured_choice(midway_plan):
    import dataclasses

    from memfit.plan.frontier import FrontierPoint
    from memfit.report.plan_text import plan_text

    timed = FrontierPoint("x (measured)", 2**30, 0.0123, chosen=True, measured=True)
    points = tuple(dataclasses.replace(p, chosen=False) for p in midway_plan.frontier)
    text = plan_text(dataclasses.replace(midway_plan, frontier=(*points, timed)))
    assert "measured        12.3 ms a step, 1.00 GiB reserved (timed on this GPU)" in text
    assert "the plans timed on this GPU (* chosen)" in text
    assert "timed on this GPU" not in plan_text(midway_plan)
