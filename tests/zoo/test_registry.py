"""The zoo's table: names, lookup errors, defaults and exact parameter counts."""

import dataclasses

import pytest
import torch

from memfit import zoo
from memfit.errors import InvalidInputError

NAMES = [
    "gpt2",
    "gpt2-medium",
    "llama-1b",
    "llama-3b",
    "llama-8b",
    "llama-70b",
    "bert-base",
    "resnet50",
    "vit-b16",
]


def gpt2_params(vocab, positions, d, layers):
    # per layer: 2 LayerNorms 4d, qkv 3d^2+3d, proj d^2+d, fc 4d^2+4d, fc2 4d^2+d
    return vocab * d + positions * d + layers * (12 * d * d + 13 * d) + 2 * d


def llama_params(vocab, d, layers, heads, kv_heads, hidden, tied=False):
    head_dim = d // heads
    attention = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d
    tables = 1 if tied else 2
    return tables * vocab * d + layers * (attention + 3 * d * hidden + 2 * d) + d


def bert_params(vocab, positions, types, d, mlp, layers):
    embeddings = vocab * d + positions * d + types * d + 2 * d
    layer = 4 * d * d + 4 * d + 2 * d * mlp + mlp + d + 4 * d
    mlm_head = d * d + d + 2 * d + vocab  # dense, LayerNorm, decoder bias (weight tied)
    return embeddings + layers * layer + mlm_head


EXPECTED_PARAMS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "llama-1b": llama_params(32000, 2048, 16, 16, 16, 5632),
    "llama-3b": llama_params(128256, 3072, 28, 24, 8, 8192, tied=True),
    "llama-8b": llama_params(128256, 4096, 32, 32, 8, 14336),
    "llama-70b": llama_params(128256, 8192, 80, 64, 8, 28672),
    "bert-base": bert_params(30522, 512, 2, 768, 3072, 12),
    "resnet50": 25_557_032,
    "vit-b16": 86_567_656,
}


def test_names_are_the_zoo_models():
    own = [n for n in zoo.names() if zoo.get(n).implementation == "memfit"]
    assert own == NAMES == zoo.names()[: len(NAMES)]  # memfit's own first
    assert zoo.__all__ == ["ZooEntry", "get", "names"]


def test_hand_formulas_match_the_published_counts():
    assert gpt2_params(50257, 1024, 768, 12) == 124_439_808
    assert gpt2_params(50257, 1024, 1024, 24) == 354_823_168
    assert EXPECTED_PARAMS["llama-1b"] == 953_223_168
    assert EXPECTED_PARAMS["llama-3b"] == 3_212_749_824  # Meta's Llama-3.2-3B
    assert EXPECTED_PARAMS["llama-8b"] == 8_030_261_248  # Llama-3.1-8B's safetensors total
    assert EXPECTED_PARAMS["llama-70b"] == 70_553_706_496  # Llama-3.1-70B's
    assert EXPECTED_PARAMS["bert-base"] == 109_514_298  # Hugging Face's BertForMaskedLM


@pytest.mark.parametrize("name", NAMES)
def test_num_params_is_exact(name):
    entry = zoo.get(name)
    with torch.device("meta"):
        model = entry.build()
    counted = sum(p.numel() for p in model.parameters())  # parameters() yields tied ones once
    assert counted == entry.num_params == EXPECTED_PARAMS[name]


@pytest.mark.parametrize(
    ("name", "family", "batch_size", "seq_len"),
    [
        ("gpt2", "causal-lm", 8, 1024),
        ("gpt2-medium", "causal-lm", 8, 1024),
        ("llama-1b", "causal-lm", 4, 2048),
        ("llama-8b", "causal-lm", 1, 8192),
        ("llama-70b", "causal-lm", 1, 8192),
        ("bert-base", "masked-lm", 32, 512),
        ("resnet50", "vision", 128, None),
        ("vit-b16", "vision", 64, None),
    ],
)
def test_defaults(name, family, batch_size, seq_len):
    entry = zoo.get(name)
    assert (entry.family, entry.default_batch_size, entry.default_seq_len) == (
        family,
        batch_size,
        seq_len,
    )
    assert entry.description


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        zoo.get("gpt2").num_params = 1


def test_get_normalises_case_and_underscores():
    assert zoo.get("GPT2_Medium").name == "gpt2-medium"


def test_unknown_name_lists_known_names_and_suggests():
    with pytest.raises(InvalidInputError) as info:
        zoo.get("gtp2")
    message = str(info.value)
    assert "'gtp2'" in message
    assert ", ".join(NAMES) in message
    assert "did you mean 'gpt2'" in message.lower()
    assert "memfit zoo" in message


def test_non_string_name_is_rejected():
    with pytest.raises(InvalidInputError, match="known models"):
        zoo.get(None)


@pytest.mark.parametrize(
    ("name", "batch_size", "seq_len", "spec"),
    [
        ("gpt2", None, None, "input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257"),
        ("llama-1b", 2, 128, "input_ids=int64[2,128]<32000 labels=int64[2,128]<32000"),
        ("bert-base", None, None, "input_ids=int64[32,512]<30522 labels=int64[32,512]<30522"),
        ("resnet50", None, None, "pixel_values=float32[128,3,224,224] labels=int64[128]<1000"),
        ("vit-b16", 3, None, "pixel_values=float32[3,3,224,224] labels=int64[3]<1000"),
    ],
)
def test_input_spec(name, batch_size, seq_len, spec):
    assert zoo.get(name).input_spec(batch_size, seq_len) == spec
