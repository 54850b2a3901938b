"""bench/validation.py: the zoo's configurations, the error table, and one case end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

validation = pytest.importorskip("validation")
validation_compare = pytest.importorskip("validation_compare")


def test_the_zoo_is_as_broad_as_the_issue_asks():
    cases = validation.all_cases()
    assert len(cases) >= 45
    assert len({c.arch for c in cases}) >= 22
    assert {c.precision for c in cases} == {"fp32", "bf16-mixed", "fp16-mixed", "bf16"}
    assert {c.mode for c in cases} == {"train", "no_grad", "inference_mode"}
    assert {"adamw", "adamw-fused", "adamw-foreach", "adamw-for-loop", "sgd"} <= {
        c.optimizer for c in cases
    }
    assert {c.group for c in cases} == set(validation.GROUPS)


def test_inference_cases_drop_labels_and_pure_bf16_feeds_bf16():
    by_name = {c.name: c for c in validation.all_cases()}
    _, spec = by_name["inf-t5-small-bf16-mixed"].built(tiny=True)
    assert "labels=" not in spec and "decoder_input_ids=" in spec
    _, spec = by_name["inf-tv-resnet50-fp32-inference-mode"].built(tiny=True)
    assert spec.count("[") == 1  # the images only
    _, spec = by_name["tv-resnet50-bf16-pure"].built(tiny=True)
    assert spec.startswith("bfloat16[")


def _measured(name: str, allocated: int, reserved: int, status: str = "ok") -> dict:
    return {
        "name": name,
        "group": "llm",
        "arch": name.split("-")[0],
        "precision": "fp32",
        "optimizer": "adamw",
        "mode": "train",
        "status": status,
        "measured_allocated": allocated,
        "measured_reserved": reserved,
    }


def test_compare_reports_signed_errors_medians_and_failures(tmp_path):
    measured = {"kind": "measure", "versions": {"gpu": "NVIDIA H200", "torch": "2.11.0"}}
    measured["rows"] = [
        _measured("a-1", 1000, 2000),
        _measured("b-1", 1000, 2000),
        _measured("c-1", 1000, 2000),
    ]
    (tmp_path / "validation_llm.json").write_text(json.dumps(measured))
    predicted = {"kind": "predict", "device": "h200", "versions": {"torch": "2.14.1"}}
    predicted["rows"] = [
        {
            **_measured("a-1", 0, 0),
            "status": "ok",
            "predicted_allocated": 1010,
            "predicted_reserved": 2000,
            "estimate_s": 1.0,
        },
        {
            **_measured("b-1", 0, 0),
            "status": "ok",
            "predicted_allocated": 950,
            "predicted_reserved": 1900,
            "estimate_s": 3.0,
        },
        {**_measured("c-1", 0, 0), "status": "hang", "estimate_s": 60.0},
    ]
    (tmp_path / "predictions.json").write_text(json.dumps(predicted))
    result = validation_compare.compare_files(
        [str(tmp_path)], str(tmp_path / "predictions.json"), tmp_path
    )
    rows = {r["name"]: r for r in result["rows"]}
    assert rows["a-1"]["error_allocated"] == pytest.approx(0.01)
    assert rows["b-1"]["error_allocated"] == pytest.approx(-0.05)
    assert rows["c-1"]["error_allocated"] is None
    summary = result["summary"]
    assert summary["compared"] == 2
    assert summary["predicted_status"] == {"ok": 2, "hang": 1}
    assert summary["allocated"]["median_abs_error"] == pytest.approx(0.03)
    assert summary["allocated"]["worst_abs_error"] == pytest.approx(0.05)
    assert summary["allocated"]["met"] is False
    assert summary["reserved"]["median_abs_error"] == pytest.approx(0.025)
    text = (tmp_path / "validation_compare.md").read_text()
    assert "NVIDIA H200" in text and "c-1 (hang)" in text and "+1.00%" in text


@pytest.mark.slow
def test_one_case_runs_on_the_cpu_and_is_predicted(tmp_path):
    pytest.importorskip("transformers")
    cases = validation.select("", "gpt2-half-frozen-bf16-mixed")
    validation.measure_all(cases, tmp_path, tiny=True)
    measured = json.loads((tmp_path / "validation_misc.json").read_text())
    (row,) = measured["rows"]
    assert row["status"] == "cpu-only", row.get("error")
    assert all(loss > 0 for loss in row["cpu_losses"])
    path = validation.predict_all(cases, tmp_path, tiny=True, device="h200")
    (predicted,) = json.loads(path.read_text())["rows"]
    assert predicted["status"] == "ok", predicted.get("error")
    assert predicted["predicted_reserved"] >= predicted["predicted_allocated"] > 0
