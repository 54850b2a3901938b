"""The progress line: silent for quick work, a bar or a clock for slow work, cleared at the end."""

from __future__ import annotations

import io
import time

from memfit.report.progress import Progress


def test_quick_work_draws_nothing() -> None:
    stream = io.StringIO()
    with Progress("packing", total=10, stream=stream, delay=5.0) as bar:
        bar.advance(10)
    assert stream.getvalue() == ""


def test_slow_work_draws_a_bar_then_clears_it() -> None:
    stream = io.StringIO()
    with Progress("packing", total=4, stream=stream, delay=0.0) as bar:
        bar.advance(2)
        time.sleep(0.3)
        assert "packing [##############..............]  50%" in stream.getvalue()
    assert stream.getvalue().endswith("\r")


def test_unknown_amount_shows_the_stage() -> None:
    bar = Progress("estimating gpt2", stream=io.StringIO(), enabled=False)
    bar.set_stage("tracing forward")
    assert bar.line().startswith("estimating gpt2: tracing forward ...")


def test_disabled_draws_nothing() -> None:
    stream = io.StringIO()
    with Progress("x", stream=stream, enabled=False, delay=0.0):
        time.sleep(0.1)
    assert stream.getvalue() == ""
