"""A plan says when the CPU issuing its step bounds it, where its predicted time is roughest."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import memfit
from memfit.plan.host_bound import HOST_BOUND_SHARE, host_bound_note
from memfit.trace.session import StepRecord, TracedOp


def _record(host_s: float, gpu_s: float, ops: int = 10) -> StepRecord:
    record: Any = StepRecord(trace=None, marks={})  # type: ignore[arg-type]
    record.ops = [
        TracedOp("forward", "layer", "aten.mm", gpu_s / ops, 0.0, host_s=host_s / ops)
        for _ in range(ops)
    ]
    return record


def test_a_step_the_cpu_bounds_gets_the_note_with_its_figures() -> None:
    record = _record(host_s=0.020, gpu_s=0.005)
    note = host_bound_note(record)
    assert note is not None
    assert record.host_time_s() == pytest.approx(0.020)
    assert f"predicted 20.0 of {record.step_time_s() * 1e3:.1f} ms" in note


def test_a_step_the_gpu_bounds_gets_none() -> None:
    assert host_bound_note(_record(host_s=0.005, gpu_s=0.050)) is None
    # just under the share of the step: still none
    step = _record(host_s=0.010, gpu_s=0.040)
    assert step.host_time_s() < HOST_BOUND_SHARE * step.step_time_s()
    assert host_bound_note(step) is None


def test_micro_batches_count_the_cpu_per_batch_as_the_step_time_does() -> None:
    record = _record(host_s=0.020, gpu_s=0.005)
    record.passes = 2  # two micro-batches traced: each operator is half a batch's
    assert record.host_time_s() == pytest.approx(0.010)
    assert host_bound_note(record) is not None


class _Narrow(nn.Module):
    """Many small layers: a step of tiny kernels, which the CPU bounds."""

    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _plan(width: int, depth: int, batch: int) -> memfit.Plan:
    spec = f"float32[{batch},{width}]"
    unmodified = memfit.estimate(lambda: _Narrow(width, depth), spec, device="h200")
    return memfit.plan(
        lambda: _Narrow(width, depth), spec, budget=2 * unmodified.peak_reserved, device="h200"
    )


def test_the_plan_of_a_narrow_model_says_its_cpu_bounds_it() -> None:
    plan = _plan(width=32, depth=8, batch=16)
    assert any(n.startswith("the CPU issuing the step's operators bounds it") for n in plan.notes)


def test_the_plan_of_a_wide_model_does_not() -> None:
    plan = _plan(width=8192, depth=2, batch=32768)  # products of milliseconds: the GPU bounds it
    assert not any(n.startswith("the CPU issuing") for n in plan.notes)
