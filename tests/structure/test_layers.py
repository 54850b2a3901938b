"""Layers techniques apply to: Hugging Face's elementwise tanh-GELUs."""

from __future__ import annotations

from memfit.structure.layers import fusable_activations
from tests.helpers import hf_gpt2, hf_llama


def test_finds_the_elementwise_gelus_only():
    assert fusable_activations(hf_gpt2()) == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert fusable_activations(hf_llama()) == []  # SiLU is one kernel already
