"""The zoo's table of models: name -> how to build it, feed it, and how big it is."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.zoo import bert, gpt2, hf, llama, resnet, vit
from memfit.zoo.inputs import ImageInputs, TokenInputs

__all__ = ["ZooEntry", "get", "names"]


@dataclass(frozen=True)
class ZooEntry:
    """One built-in model.

    Attributes:
        name: the key users pass (``memfit estimate gpt2``).
        description: one line for ``memfit zoo``.
        family: ``"causal-lm"``, ``"masked-lm"`` or ``"vision"``.
        build: builds the model with its default config and fresh random weights. Works under
            ``FakeTensorMode`` and ``with torch.device("meta")``, where it allocates nothing.
        make_batch: ``make_batch(batch_size=None, seq_len=None, *, device=None)`` -> a dict of
            example inputs including ``labels``; None picks the defaults below.
        default_batch_size: batch size when none is given.
        default_seq_len: tokens per sequence when none is given; None for vision models.
        num_params: parameters of the default config, by formula (tied weights once).
        input_spec: ``input_spec(batch_size, seq_len)`` -> text such as
            ``"input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257"``.
        implementation: whose code builds it: ``"memfit"`` (its own, in plain PyTorch) or
            ``"transformers"`` (Hugging Face's, listed when transformers is installed).
    """

    name: str
    description: str
    family: str
    build: Callable[[], nn.Module]
    make_batch: Callable[..., dict[str, torch.Tensor]]
    default_batch_size: int
    default_seq_len: int | None
    num_params: int
    input_spec: Callable[[int | None, int | None], str]
    implementation: str = "memfit"


def _lm(
    name: str,
    description: str,
    *,
    family: str,
    build: Callable[[], nn.Module],
    config: gpt2.GPT2Config | llama.LlamaConfig | bert.BertConfig,
    num_params: int,
    batch_size: int,
    seq_len: int,
    implementation: str = "memfit",
) -> ZooEntry:
    inputs = TokenInputs(name, config.vocab_size, config.max_seq_len, batch_size, seq_len)
    return ZooEntry(
        name=name,
        description=description,
        family=family,
        build=build,
        make_batch=inputs.make_batch,
        default_batch_size=batch_size,
        default_seq_len=seq_len,
        num_params=num_params,
        input_spec=inputs.input_spec,
        implementation=implementation,
    )


def _vision(
    name: str,
    description: str,
    *,
    build: Callable[[], nn.Module],
    config: resnet.ResNetConfig | vit.ViTConfig,
    num_params: int,
    batch_size: int,
) -> ZooEntry:
    inputs = ImageInputs(name, config.channels, config.image_size, config.num_classes, batch_size)
    return ZooEntry(
        name=name,
        description=description,
        family="vision",
        build=build,
        make_batch=inputs.make_batch,
        default_batch_size=batch_size,
        default_seq_len=None,
        num_params=num_params,
        input_spec=inputs.input_spec,
    )


def _entries() -> dict[str, ZooEntry]:
    small, medium, llama_1b = gpt2.GPT2_SMALL, gpt2.GPT2_MEDIUM, llama.LlamaConfig()
    llama_3b = llama.LLAMA_3B
    bert_base, resnet50, vit_b16 = bert.BertConfig(), resnet.ResNetConfig(), vit.ViTConfig()
    entries = [
        _lm(
            "gpt2",
            "GPT-2 small: 12 layers, width 768, 12 heads, tied LM head (Hugging Face's: hf-gpt2)",
            family="causal-lm",
            build=lambda: gpt2.GPT2(small),
            config=small,
            num_params=gpt2.num_params(small),
            batch_size=8,
            seq_len=1024,
        ),
        _lm(
            "gpt2-medium",
            "GPT-2 medium: 24 layers, width 1024, 16 heads, tied LM head",
            family="causal-lm",
            build=lambda: gpt2.GPT2(medium),
            config=medium,
            num_params=gpt2.num_params(medium),
            batch_size=8,
            seq_len=1024,
        ),
        _lm(
            "llama-1b",
            "LLaMA-style 1B: 16 layers, width 2048, RMSNorm, rotary, SwiGLU, untied head",
            family="causal-lm",
            build=lambda: llama.Llama(llama_1b),
            config=llama_1b,
            num_params=llama.num_params(llama_1b),
            batch_size=4,
            seq_len=2048,
        ),
        _lm(
            "llama-3b",
            "Llama-3.2-3B's shape: 28 layers, width 3072, 24 heads (8 KV), MLP 8192, vocabulary "
            "128256, tied head (Hugging Face's: hf-llama-3b)",
            family="causal-lm",
            build=lambda: llama.Llama(llama_3b),
            config=llama_3b,
            num_params=llama.num_params(llama_3b),
            batch_size=8,
            seq_len=2048,
        ),
        _lm(
            "llama-8b",
            "Llama-3.1-8B's shape: 32 layers, width 4096, 8 KV heads, vocabulary 128256",
            family="causal-lm",
            build=lambda: llama.Llama(llama.LLAMA_8B),
            config=llama.LLAMA_8B,
            num_params=llama.num_params(llama.LLAMA_8B),
            batch_size=1,
            seq_len=8192,
        ),
        _lm(
            "llama-70b",
            "Llama-3.1-70B's shape: 80 layers, width 8192, 8 KV heads, vocabulary 128256",
            family="causal-lm",
            build=lambda: llama.Llama(llama.LLAMA_70B),
            config=llama.LLAMA_70B,
            num_params=llama.num_params(llama.LLAMA_70B),
            batch_size=1,
            seq_len=8192,
        ),
        _lm(
            "bert-base",
            "BERT-base with its masked-LM head: 12 post-LN layers, width 768, 12 heads",
            family="masked-lm",
            build=lambda: bert.Bert(bert_base),
            config=bert_base,
            num_params=bert.num_params(bert_base),
            batch_size=32,
            seq_len=512,
        ),
        _vision(
            "resnet50",
            "ResNet-50 v1.5: bottleneck stages [3, 4, 6, 3], BatchNorm, 224x224 images",
            build=lambda: resnet.ResNet(resnet50),
            config=resnet50,
            num_params=resnet.num_params(resnet50),
            batch_size=128,
        ),
        _vision(
            "vit-b16",
            "ViT-B/16: 12 pre-LN layers, width 768, 197 tokens at 224x224",
            build=lambda: vit.ViT(vit_b16),
            config=vit_b16,
            num_params=vit.num_params(vit_b16),
            batch_size=64,
        ),
    ]
    if hf.available():  # Hugging Face's implementations of the same architectures
        entries += [
            _lm(
                m.name,
                m.description,
                family=m.family,
                build=m.build,
                config=m.shapes,
                num_params=m.num_params,
                batch_size=m.batch_size,
                seq_len=m.seq_len,
                implementation="transformers",
            )
            for m in hf.HF_MODELS
        ]
    return {entry.name: entry for entry in entries}


_ZOO = _entries()


def names() -> list[str]:
    """Names of the built-in models, language models first."""
    return list(_ZOO)


def get(name: str) -> ZooEntry:
    """Look up a built-in model by name.

    Args:
        name: a zoo name such as ``"gpt2"``; case and ``_``/``-`` are not significant.

    Returns:
        The model's ``ZooEntry``.

    Raises:
        InvalidInputError: the name is not in the zoo; the message lists the known names.

    Example:
        >>> entry = get("gpt2")
        >>> entry.num_params
        124439808
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key not in _ZOO:
        close = difflib.get_close_matches(key or "", _ZOO, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise InvalidInputError(
            f"unknown zoo model {name!r}; known models: {', '.join(_ZOO)}.{hint} Run `memfit zoo` "
            f"to list them with their sizes, or pass path/to/file.py:builder for your own model"
        )
    entry = _ZOO[key]
    return entry
