"""LeakWatch names a loss accumulated without .item(): shape, dtype, holder, creation line."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.guard import LeakWatch


def _loop(watch: LeakWatch, *, leak: bool, steps: int = 10):
    """Training with a validation loss summed each step, without no_grad and without .item().

    Each leaked graph keeps about 270 KiB: well above the host census's noise, which moved by
    up to ~20 KiB between steps in a full test run (a 12 KiB leak was missed there)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 256), nn.Tanh(), nn.Linear(256, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    val_total = 0.0
    for _ in range(steps):
        with watch.step():
            loss = model(torch.randn(256, 16)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            val_loss = model(torch.randn(256, 16)).pow(2).mean()
            if leak:
                val_total = val_total + val_loss  # LEAK: keeps every graph and its activations
            else:
                val_total = val_total + val_loss.item()
    return val_total


def _train_total(watch: LeakWatch, steps: int = 12):
    """The summed training loss after backward: graph nodes pile up, saved tensors do not."""
    model = nn.Linear(8, 1)
    total = 0.0
    for _ in range(steps):
        with watch.step():
            loss = model(torch.randn(4, 8)).pow(2).mean()
            loss.backward()
            total = total + loss  # TOTAL
    return total


@pytest.mark.slow
def test_names_a_loss_accumulated_without_item(caplog: pytest.LogCaptureFixture) -> None:
    watch = LeakWatch(warmup=2, patience=3, min_growth_bytes=1)
    with caplog.at_level(logging.INFO, logger="memfit.guard"):
        _loop(watch, leak=True)
    assert watch.reports, watch.samples
    report = watch.reports[0]
    assert report.step == 6  # growth seen at step 5, one tracked step, then the report
    culprit = report.culprits[0]
    assert culprit.shape == () and culprit.dtype == "torch.float32" and culprit.device == "cpu"
    assert culprit.grad_fn == "AddBackward0"
    assert culprit.graph_nodes > 20 and culprit.saved_bytes > 6 * 256 * 256 * 4
    assert any("local 'val_total' in _loop" in name for name in culprit.held_by)
    line = _line_of(_loop, "# LEAK")
    assert culprit.created_at is not None
    assert culprit.created_at.startswith(f"test_leak.py:{line} in _loop: val_total = val_total +")
    # and the training loss (alive until the next step), never what lies inside the graphs
    assert len(report.culprits) == 2 and report.culprits[1].held_by[0].startswith("local 'loss'")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1 and "float32[] on cpu (AddBackward0)" in messages[0]
    assert "loss.item()" in messages[0]


def _line_of(fn, marker: str) -> int:
    lines = inspect.getsource(fn).splitlines()
    return next(i for i, text in enumerate(lines) if marker in text) + fn.__code__.co_firstlineno


@pytest.mark.slow
def test_loss_summed_after_backward_is_found_by_the_graph_check() -> None:
    flat = LeakWatch(warmup=2, patience=3, min_growth_bytes=1)
    _train_total(flat)
    assert not flat.reports  # backward freed the activations: no memory growth to see
    watch = LeakWatch(warmup=2, patience=3, min_growth_bytes=1, graph_check_every=1)
    _train_total(watch)
    culprit = watch.reports[0].culprits[0]
    assert culprit.shape == () and culprit.saved_bytes == 0 and culprit.graph_nodes > 10
    assert (
        culprit.created_at is not None
        and f":{_line_of(_train_total, '# TOTAL')} " in culprit.created_at
    )


@pytest.mark.slow
def test_no_report_without_a_leak() -> None:
    watch = LeakWatch(warmup=2, patience=3, min_growth_bytes=1)
    _loop(watch, leak=False)
    assert not watch.reports


def test_sample_form_and_injected_memory_reading() -> None:
    readings = iter([100, 100, 100, 200, 300, 400, 500, 600])
    watch = LeakWatch(warmup=1, patience=3, memory_fn=lambda: next(readings), min_growth_bytes=50)
    reports = [watch.sample() for _ in range(6)]
    assert reports[:5] == [None] * 5 and reports[5] is not None
    assert reports[5].growth_bytes == 300 and reports[5].samples_bytes == (100, 200, 300, 400)


def test_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="patience=0"):
        LeakWatch(patience=0)
