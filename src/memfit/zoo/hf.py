"""The Hugging Face implementations as zoo entries, when ``transformers`` is installed.

``hf-gpt2`` is ``transformers.GPT2LMHeadModel`` built from ``GPT2Config()``: the model people
mean by "GPT-2", and the one ``from_pretrained("gpt2")`` trains (random weights here: memory does
not depend on their values). Its step needs more memory than memfit's own ``gpt2`` (same shapes,
written for memfit: fused attention, one-kernel GELU): measured on an H200 at bs 8, seq 1024,
bf16-mixed, 14.21 against 10.44 GiB reserved (README). The configs are the benchmarks'
(bench/models.py), with SDPA attention as a GPU uses it.

``transformers`` is imported when a model is built, not when the zoo is listed: it takes seconds
to import. Parameter counts are by formula (the same architectures as memfit's own models; the
tests build both and compare).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from torch import nn

from memfit.import_notices import torchao_enum_notices_muted
from memfit.zoo import bert, gpt2, llama

__all__ = ["available", "HF_MODELS", "HFModel"]


def available() -> bool:
    """Whether ``transformers`` is installed (found without importing it)."""
    return importlib.util.find_spec("transformers") is not None


def _build(kind: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        with torchao_enum_notices_muted():  # transformers' models import torchao
            import transformers  # optional and slow to import: only when a model is built

            config_class, model_class, loss_type = {
                "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel, "ForCausalLM"),
                "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, None),
                "bert": (transformers.BertConfig, transformers.BertForMaskedLM, None),
            }[kind]
        model: nn.Module = model_class(config_class(attn_implementation="sdpa", **config))
        if loss_type is not None:
            # the loss transformers falls back to for this class's name, named so that it says
            # nothing about an unrecognized loss_type
            setattr(model, "loss_type", loss_type)  # noqa: B010 (nn.Module types its attributes)
        return model

    build.__name__ = f"hf_{kind}"
    return build


class HFModel:
    """One Hugging Face model of the zoo: its builder and the memfit config of the same shapes."""

    def __init__(
        self,
        name: str,
        description: str,
        *,
        family: str,
        build: Callable[[], nn.Module],
        shapes: gpt2.GPT2Config | llama.LlamaConfig | bert.BertConfig,
        num_params: int,
        batch_size: int,
        seq_len: int,
    ) -> None:
        self.name, self.description, self.family = name, description, family
        self.build, self.shapes, self.num_params = build, shapes, num_params
        self.batch_size, self.seq_len = batch_size, seq_len


def _llama_sizes(config: llama.LlamaConfig) -> dict[str, int]:
    """transformers' LlamaConfig arguments for the sizes of memfit's ``config``."""
    return dict(
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.max_seq_len,
    )


_LLAMA_1B = llama.LlamaConfig()
_LLAMA_3B = llama.LLAMA_3B
_BERT = bert.BertConfig()

HF_MODELS = (
    HFModel(
        "hf-gpt2",
        "GPT-2 small as GPT2LMHeadModel(GPT2Config()), what from_pretrained('gpt2') trains",
        family="causal-lm",
        build=_build("gpt2"),
        shapes=gpt2.GPT2_SMALL,
        num_params=gpt2.num_params(gpt2.GPT2_SMALL),
        batch_size=8,
        seq_len=1024,
    ),
    HFModel(
        "hf-gpt2-medium",
        "GPT-2 medium as GPT2LMHeadModel: 24 layers, width 1024, 16 heads",
        family="causal-lm",
        build=_build("gpt2", n_embd=1024, n_layer=24, n_head=16),
        shapes=gpt2.GPT2_MEDIUM,
        num_params=gpt2.num_params(gpt2.GPT2_MEDIUM),
        batch_size=8,
        seq_len=1024,
    ),
    HFModel(
        "hf-llama-1b",
        "LlamaForCausalLM at llama-1b's sizes: 16 layers, width 2048, untied head",
        family="causal-lm",
        build=_build("llama", **_llama_sizes(_LLAMA_1B)),
        shapes=_LLAMA_1B,
        num_params=llama.num_params(_LLAMA_1B),
        batch_size=4,
        seq_len=2048,
    ),
    HFModel(
        "hf-llama-3b",
        "LlamaForCausalLM at Llama-3.2-3B's shape: 28 layers, width 3072, 8 KV heads, tied head",
        family="causal-lm",
        build=_build(
            "llama",
            **_llama_sizes(_LLAMA_3B),
            rope_theta=_LLAMA_3B.rope_theta,
            tie_word_embeddings=True,
        ),
        shapes=_LLAMA_3B,
        num_params=llama.num_params(_LLAMA_3B),
        batch_size=8,
        seq_len=2048,
    ),
    HFModel(
        "hf-bert-base",
        "BERT-base as BertForMaskedLM(BertConfig())",
        family="masked-lm",
        build=_build("bert"),
        shapes=_BERT,
        num_params=bert.num_params(_BERT),
        batch_size=32,
        seq_len=512,
    ),
)
