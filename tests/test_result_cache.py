"""The command line's answer cache: the same question answers without tracing, and misses when
anything that computes the answer changes."""

from __future__ import annotations

import json

import pytest

from memfit import result_cache
from memfit.cli import main

ARGS = ["estimate", "gpt2", "--batch-size", "1", "--seq-len", "32", "--precision", "fp32"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("MEMFIT_NO_CACHE", raising=False)
    return tmp_path / "memfit" / "answers"


def test_the_second_ask_is_answered_from_the_cache_without_tracing(cache, capsys, monkeypatch):
    assert main(ARGS) == 0
    first = capsys.readouterr()
    assert len(list(cache.glob("*.json"))) == 1
    import memfit.trace.estimate as estimate_module

    def refuse(*args, **kwargs):
        raise AssertionError("traced again")

    monkeypatch.setattr(estimate_module, "trace_step", refuse)
    assert main(ARGS) == 0
    second = capsys.readouterr()
    assert second.out == first.out
    assert "from its cache" in second.err and "--no-cache" in second.err
    with pytest.raises(AssertionError, match="traced again"):
        main([*ARGS, "--no-cache"])


def test_other_options_and_other_code_miss(cache, capsys, monkeypatch):
    key = result_cache.cache_key("estimate", {"model": "gpt2", "batch_size": 1})
    assert key != result_cache.cache_key("estimate", {"model": "gpt2", "batch_size": 2})
    assert key != result_cache.cache_key("plan", {"model": "gpt2", "batch_size": 1})
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # simulated
    assert key != result_cache.cache_key("estimate", {"model": "gpt2", "batch_size": 1})
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    assert key == result_cache.cache_key("estimate", {"model": "gpt2", "batch_size": 1})
    monkeypatch.setattr(result_cache, "_code_digest", lambda: "another memfit")
    assert key != result_cache.cache_key("estimate", {"model": "gpt2", "batch_size": 1})


@pytest.mark.parametrize(
    "options",
    [
        {"model": "model.py:build"},
        {"model": "gpt2", "loss_fn": "loss.py:f"},
        {"model": "gpt2", "input_spec": "float32[2,3]"},
        {"model": "gpt2", "device": "cuda"},
    ],
)
def test_what_memfit_cannot_fingerprint_is_never_cached(cache, options):
    assert result_cache.cache_key("estimate", options) is None


def test_a_cached_plan_is_written_to_out_too(cache, capsys, tmp_path):
    args = ["plan", "gpt2", "--batch-size", "1", "--seq-len", "32", "--budget", "16GiB", "-q"]
    assert main(args) == 0
    label = capsys.readouterr().out
    out = tmp_path / "plan.json"
    assert main([*args, "--out", str(out)]) == 0
    assert capsys.readouterr().out == label
    assert json.loads(out.read_text())["label"] == label.strip()


def test_a_plan_for_compile_is_not_answered_by_a_cached_eager_plan(cache, capsys, monkeypatch):
    args = ["plan", "gpt2", "--batch-size", "1", "--seq-len", "32", "--budget", "16GiB", "-q"]
    assert main(args) == 0
    capsys.readouterr()
    import memfit.plan.search as search_module

    def refuse(*a, **k):
        raise AssertionError("planned again")

    monkeypatch.setattr(search_module, "plan", refuse)
    assert main(args) == 0  # the same question: from the cache
    with pytest.raises(AssertionError, match="planned again"):
        main([*args, "--compile"])
