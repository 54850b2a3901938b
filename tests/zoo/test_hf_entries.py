"""Hugging Face's implementations as zoo entries (when transformers is installed)."""

from __future__ import annotations

import json

import pytest
import torch

from memfit import zoo
from memfit.cli import main

pytest.importorskip("transformers")

HF = ["hf-gpt2", "hf-gpt2-medium", "hf-llama-1b", "hf-llama-3b", "hf-bert-base"]
CLASSES = {
    "hf-gpt2": "GPT2LMHeadModel",
    "hf-gpt2-medium": "GPT2LMHeadModel",
    "hf-llama-1b": "LlamaForCausalLM",
    "hf-llama-3b": "LlamaForCausalLM",
    "hf-bert-base": "BertForMaskedLM",
}


def test_they_are_listed_after_memfits_own() -> None:
    names = zoo.names()
    assert names[-len(HF) :] == HF
    assert all(zoo.get(n).implementation == "transformers" for n in HF)


@pytest.mark.parametrize("name", HF)
def test_each_builds_hugging_faces_class_with_the_counted_parameters(name: str) -> None:
    entry = zoo.get(name)
    with torch.device("meta"):
        model = entry.build()
    assert type(model).__name__ == CLASSES[name]
    assert type(model).__module__.startswith("transformers.")
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    # the same shapes as memfit's own entry of that name
    own = zoo.get(name.removeprefix("hf-"))
    assert entry.num_params == own.num_params
    assert entry.input_spec(None, None) == own.input_spec(None, None)


def test_hf_gpt2_is_what_the_benchmarks_measured() -> None:
    with torch.device("meta"):
        model = zoo.get("hf-gpt2").build()
    assert model.config.n_positions == 1024 and model.config.vocab_size == 50257
    assert model.config._attn_implementation == "sdpa"


def test_zoo_says_whose_each_entry_is(capsys) -> None:
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("hf-gpt2 "))
    assert "transformers" in row and "GPT2LMHeadModel" in row
    row = next(line for line in out.splitlines() if line.startswith("gpt2 "))
    assert "memfit" in row and "hf-gpt2" in row
    assert main(["zoo", "--format", "json"]) == 0
    data = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert data["hf-llama-1b"]["implementation"] == "transformers"
    assert data["llama-1b"]["implementation"] == "memfit"


def test_estimate_says_which_model_a_zoo_name_is(capsys) -> None:
    args = ["--batch-size", "1", "--seq-len", "32", "--precision", "fp32"]
    assert main(["estimate", "hf-gpt2", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("hf-gpt2 on h100-80gb")
    assert lines[1].startswith("zoo model       hf-gpt2 = GPT-2 small as GPT2LMHeadModel")
    assert "Hugging Face transformers" in lines[1]
    assert main(["estimate", "gpt2", *args]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert "memfit's own implementation" in line and "hf-gpt2" in line
