"""Gated MLPs (``down(act(gate(x)) * up(x))``) found in Hugging Face and zoo models."""

from __future__ import annotations

from memfit.structure.gated_mlp import gated_mlps
from tests.helpers import hf_gpt2, hf_llama, tiny_llama


def test_finds_gated_mlps_of_hugging_face_and_the_zoo():
    assert gated_mlps(hf_llama()) == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert gated_mlps(tiny_llama()) == ["layers.0.mlp", "layers.1.mlp"]
    assert gated_mlps(hf_gpt2()) == []  # not gated
