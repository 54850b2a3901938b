"""find_blocks on every zoo model, Hugging Face and torchvision models, and edge cases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
import memfit.zoo as zoo
from memfit.structure.blocks import find_blocks
from tests.helpers import Block, Net, hf_gpt2, hf_llama

ZOO_BLOCKS = {
    "gpt2": [f"layers.{i}" for i in range(12)],
    "gpt2-medium": [f"layers.{i}" for i in range(24)],
    "llama-1b": [f"layers.{i}" for i in range(16)],
    "llama-3b": [f"layers.{i}" for i in range(28)],
    "llama-8b": [f"layers.{i}" for i in range(32)],
    "llama-70b": [f"layers.{i}" for i in range(80)],
    "bert-base": [f"layers.{i}" for i in range(12)],
    "vit-b16": [f"layers.{i}" for i in range(12)],
    "resnet50": [f"stages.{s}.{b}" for s, n in enumerate((3, 4, 6, 3)) for b in range(n)],
    # Hugging Face's, listed when transformers is installed
    "hf-gpt2": [f"transformer.h.{i}" for i in range(12)],
    "hf-gpt2-medium": [f"transformer.h.{i}" for i in range(24)],
    "hf-llama-1b": [f"model.layers.{i}" for i in range(16)],
    "hf-llama-3b": [f"model.layers.{i}" for i in range(28)],
    "hf-bert-base": [f"bert.encoder.layer.{i}" for i in range(12)],
}


@pytest.mark.parametrize("name", zoo.names())
def test_zoo(name):
    with torch.device("meta"):
        model = zoo.get(name).build()
    assert find_blocks(model) == ZOO_BLOCKS[name]


def test_hugging_face():
    from transformers import BertConfig, BertForMaskedLM

    assert find_blocks(hf_gpt2()) == ["transformer.h.0", "transformer.h.1"]
    assert find_blocks(hf_llama()) == ["model.layers.0", "model.layers.1"]
    config = BertConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=97,
        max_position_embeddings=16,
    )
    assert find_blocks(BertForMaskedLM(config)) == [f"bert.encoder.layer.{i}" for i in range(3)]


def test_torchvision():
    import torchvision

    with torch.device("meta"):
        resnet, vit = torchvision.models.resnet18(), torchvision.models.vit_b_16()
    assert find_blocks(resnet) == [f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]
    assert find_blocks(vit) == [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    with torch.device("meta"):
        convnext = torchvision.models.convnext_tiny()
    stages = {1: 3, 3: 3, 5: 9, 7: 3}  # CNBlocks inside the stage containers, not the stages
    assert find_blocks(convnext) == [
        f"features.{s}.{b}" for s, n in stages.items() for b in range(n)
    ]


class Mixer(nn.Module):
    """A state-space-like layer of about the same size as ``Block``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 8 * dim)


def test_alternating_layer_types_in_one_stack():
    model = nn.Sequential(
        nn.Embedding(10, 8),
        nn.ModuleList([Block(8), Mixer(8), Block(8), Mixer(8)]),
        nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 10)),  # repeated classes, but leaves
    )
    assert find_blocks(model) == ["1.0", "1.1", "1.2", "1.3"]


def test_blocks_inside_a_wrapper_and_without_containers():
    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Net(n_blocks=3)

    assert find_blocks(nn.Sequential(Stack(), nn.Linear(3, 3))) == [
        "0.inner.layers.0",
        "0.inner.layers.1",
        "0.inner.layers.2",
    ]

    class TwoBlocks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.head, self.second = Block(8), nn.Linear(8, 2), Block(8)

    assert find_blocks(TwoBlocks()) == ["first", "second"]


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))


def test_flat_containers_in_a_container_are_blocks():
    model = nn.Sequential(
        nn.Linear(4, 8), nn.ModuleList([_mlp() for _ in range(3)]), nn.Linear(8, 2)
    )
    assert find_blocks(model) == ["1.0", "1.1", "1.2"]
    # the same container type with other layers is another kind of block: the larger wins
    small = [nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2)]
    mixed = nn.ModuleList([_mlp(), small[0], _mlp(), small[1]])
    assert find_blocks(mixed) == ["0", "2"]
    # a flat container at the top is the model, not a block; a container of blocks is a stage
    assert find_blocks(_mlp()) == []
    stages = nn.Sequential(nn.Sequential(_mlp(), _mlp()), nn.Sequential(_mlp(), _mlp(), _mlp()))
    assert find_blocks(stages) == ["0.0", "0.1", "1.0", "1.1", "1.2"]


def test_a_model_without_blocks_is_planned_with_a_note():
    model = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024))
    unmodified = memfit.estimate(model, "float32[4096,1024]", device="h200", precision="fp32")
    plan = memfit.plan(
        model,
        "float32[4096,1024]",
        budget=int(unmodified.peak_reserved * 0.9),
        device="h200",
        precision="fp32",
        allow=["checkpoint", "micro_batch"],
    )
    assert any("no repeated blocks found in this Sequential" in note for note in plan.notes)


def test_nothing_repeated():
    assert find_blocks(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) == []
    assert find_blocks(Block(8)) == []
