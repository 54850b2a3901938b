"""``memfit calibrate``: the H200-fitted defaults scaled by how the local GPU compares."""

from __future__ import annotations

import dataclasses
import functools
import json

import pytest
import torch
from torch import nn

import memfit
import memfit.measure.host as host_module
from memfit.cli import main
from memfit.cost import Calibration, load_calibration, save_calibration
from memfit.devices import get_device, host_spec
from memfit.measure.calibrate import DEFAULTS, REFERENCE, Microbenchmarks, calibration_from
from memfit.offload_cost import calibrated_host


def test_the_reference_gpu_gets_the_defaults() -> None:
    calibration = calibration_from(REFERENCE, get_device("h200"))
    assert calibration.matmul_efficiency == pytest.approx(DEFAULTS.matmul_efficiency)
    assert calibration.bandwidth_efficiency == pytest.approx(DEFAULTS.bandwidth_efficiency)
    assert calibration.kernel_s == pytest.approx(DEFAULTS.kernel_s)
    assert calibration.device == "h200"


def test_efficiencies_scale_with_the_fraction_of_the_datasheet_reached() -> None:
    a100 = get_device("a100-80gb")
    ref_mm, ref_bw = REFERENCE.fractions(get_device("h200"))
    measured = Microbenchmarks(
        matmul_flops=0.5 * ref_mm * a100.bf16_flops,  # half the reference's fraction
        copy_bytes_s=ref_bw * a100.bandwidth_bytes_s,  # the same fraction
        kernel_s=2 * REFERENCE.kernel_s,
        device=a100.name,
    )
    calibration = calibration_from(measured, a100)
    assert calibration.matmul_efficiency == pytest.approx(0.5 * DEFAULTS.matmul_efficiency)
    assert calibration.bandwidth_efficiency == pytest.approx(DEFAULTS.bandwidth_efficiency)
    assert calibration.kernel_s == pytest.approx(2 * DEFAULTS.kernel_s)
    assert calibration.host_forward_op_s == pytest.approx(2 * DEFAULTS.host_forward_op_s)
    assert calibration.selective_op_s == pytest.approx(2 * DEFAULTS.selective_op_s)


def test_a_saved_calibration_changes_predicted_step_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # large enough that FLOPs and bytes, not kernel launches, set the time
    model = nn.Sequential(nn.Linear(2048, 8192), nn.GELU(), nn.Linear(8192, 2048))
    batch = "float32[131072,2048]"  # built on fake tensors: nothing allocated
    before = memfit.estimate(model, batch, device="h100-80gb").step_time_s
    slow = dataclasses.replace(
        DEFAULTS, matmul_efficiency=0.1, bandwidth_efficiency=0.05, device="h100-80gb"
    )
    path = save_calibration(slow)
    assert path.is_relative_to(tmp_path)
    assert load_calibration(get_device("h100-80gb")) == slow
    assert load_calibration(get_device("a100-80gb")) == Calibration()  # other devices unchanged
    after = memfit.estimate(model, batch, device="h100-80gb").step_time_s
    assert before is not None and after is not None and after > 3 * before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_without_a_gpu_the_command_says_so(capsys) -> None:
    assert main(["calibrate"]) == 2
    err = capsys.readouterr().err
    assert "torch sees none" in err and "Traceback" not in err


@pytest.mark.gpu
def test_calibrate_on_the_local_gpu(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["calibrate"]) == 0
    assert "saved to" in capsys.readouterr().out
    spec = memfit.devices.local_device()
    calibration = load_calibration(spec)
    assert calibration.device == spec.name
    assert 0.2 < calibration.matmul_efficiency < 2 and 0.1 < calibration.bandwidth_efficiency < 1


def test_host_calibration_times_fused_adamw_and_is_used_for_this_machine(
    tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rates = host_module.measure_host(params=2**20, threads=1, progress=lambda _: None)
    assert rates.adam_params_s > 1e6 and rates.threads == 1
    assert (rates.pcie_bytes_s is None) == (not torch.cuda.is_available())
    small = functools.partial(host_module.measure_host, params=2**20, threads=1)
    monkeypatch.setattr(host_module, "measure_host", small)
    assert main(["calibrate", "--host", "--format", "json"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["saved_to"] is not None and saved["adam_params_s"] > 1e6
    here = host_spec()
    assert calibrated_host(here).adam_params_s == saved["adam_params_s"]
    assert calibrated_host(here).name == "calibrated"
    given = host_spec("64GiB", cores=8)
    assert calibrated_host(given) == given  # another machine: its own figures


def test_every_speed_constant_is_rescaled() -> None:
    # a GPU half as fast in every microbenchmark: every constant that is a speed moves, so a
    # constant added to Calibration is not left at the H200's value by mistake
    from memfit.measure.calibrate import SCALED_BY, SHAPES

    h200 = get_device("h200")
    ref_mm, ref_bw = REFERENCE.fractions(h200)
    slow = Microbenchmarks(
        matmul_flops=0.5 * REFERENCE.matmul_flops,
        copy_bytes_s=0.5 * REFERENCE.copy_bytes_s,
        kernel_s=2 * REFERENCE.kernel_s,
        device="h200",
    )
    calibration = calibration_from(slow, h200)
    constants = {f.name for f in dataclasses.fields(Calibration)} - {"device"}
    assert constants == set(SCALED_BY) | set(SHAPES)
    factor = {"compute": 0.5, "bandwidth": 0.5, "host": 2.0}
    for name, kind in SCALED_BY.items():
        assert getattr(calibration, name) == pytest.approx(
            factor[kind] * getattr(DEFAULTS, name)
        ), name
    for name in SHAPES:
        assert getattr(calibration, name) == getattr(DEFAULTS, name)
    # the fitted host constants the old code kept at the H200's: checkpointing's and the step's
    assert calibration.checkpoint_region_s == pytest.approx(2 * DEFAULTS.checkpoint_region_s)
    assert calibration.forward_backward_s == pytest.approx(2 * DEFAULTS.forward_backward_s)


def test_a_saved_calibration_records_what_made_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = save_calibration(dataclasses.replace(DEFAULTS, device="h100-80gb"))
    made = json.loads(path.read_text())["h100-80gb"]["made_with"]
    assert made["torch"] in torch.__version__
    assert set(made) >= {"date", "torch"}
    assert load_calibration(get_device("h100-80gb")).device == "h100-80gb"  # read past it
