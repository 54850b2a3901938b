"""The validation zoo's plain PyTorch transformer, peft LoRA, partly frozen models, and inference
(``eval()`` under ``torch.no_grad()`` or ``torch.inference_mode()``)."""

from __future__ import annotations

import dataclasses

from torch import nn

from validation_case import Builder, Case, named
from validation_llm import GPT2, GPT2_TINY, LLAMA_MHA, MISTRAL, QWEN2, causal_lm, tiny_llama
from validation_models import bert_mlm, t5, vision


def transformer_encoder(tiny: bool) -> tuple[Builder, str]:
    """``nn.TransformerEncoder``: pre-norm, GELU, batch-first, dropout 0.1."""
    d, heads, ff, layers, bs, seq = (32, 4, 64, 2, 2, 16) if tiny else (512, 8, 2048, 6, 32, 512)

    def build() -> nn.Module:
        layer = nn.TransformerEncoderLayer(
            d, heads, ff, dropout=0.1, activation="gelu", batch_first=True, norm_first=True
        )
        return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    return named(build, "nn_transformer_encoder"), f"float32[{bs},{seq},{d}]"


def lora_llama(tiny: bool) -> tuple[Builder, str]:
    """peft LoRA (r=16 on the attention projections) on a LLaMA-style model."""
    base, spec = causal_lm("LlamaConfig", tiny_llama(), LLAMA_MHA, (4, 1024))(tiny)

    def build() -> nn.Module:
        import peft  # optional: imported when the case is built

        lora = peft.LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            task_type="CAUSAL_LM",
        )
        return peft.get_peft_model(base(), lora)

    return named(build, "peft_lora_llama"), spec


def frozen_gpt2(tiny: bool) -> tuple[Builder, str]:
    """GPT-2 with its embeddings and the first half of its blocks frozen."""
    base, spec = causal_lm("GPT2Config", GPT2_TINY, GPT2, (4, 1024))(tiny)

    def build() -> nn.Module:
        model = base()
        blocks = model.transformer.h
        for module in (model.transformer.wte, model.transformer.wpe, *blocks[: len(blocks) // 2]):
            module.requires_grad_(False)
        return model

    return named(build, "gpt2_half_frozen"), spec


def frozen_resnet(tiny: bool) -> tuple[Builder, str]:
    """torchvision ResNet-50 fine-tuning its last stage and classifier only."""
    base, spec = vision("torchvision", "resnet50", 64)(tiny)

    def build() -> nn.Module:
        model = base()
        for name, module in model.named_children():
            module.requires_grad_(name in ("layer4", "fc"))
        return model

    return named(build, "resnet50_last_stage"), spec


def misc_cases() -> list[Case]:
    tv = ("torchvision",)
    return [
        Case(
            "nn-transformer-encoder-fp32",
            "misc",
            "nn_transformer",
            transformer_encoder,
            "fp32",
            needs=(),
        ),
        Case(
            "nn-transformer-encoder-bf16-mixed",
            "misc",
            "nn_transformer",
            transformer_encoder,
            "bf16-mixed",
            needs=(),
        ),
        Case(
            "peft-lora-llama-bf16-mixed",
            "misc",
            "peft_lora",
            lora_llama,
            "bf16-mixed",
            needs=("transformers", "peft"),
        ),
        Case(
            "peft-lora-llama-fp32",
            "misc",
            "peft_lora",
            lora_llama,
            "fp32",
            needs=("transformers", "peft"),
        ),
        Case("gpt2-half-frozen-bf16-mixed", "misc", "gpt2", frozen_gpt2, "bf16-mixed"),
        Case(
            "tv-resnet50-last-stage-fp32",
            "misc",
            "resnet",
            frozen_resnet,
            "fp32",
            image=True,
            needs=tv,
        ),
        Case(
            "tv-resnet50-bf16-pure",
            "misc",
            "resnet",
            vision("torchvision", "resnet50", 64),
            "bf16",
            image=True,
            needs=tv,
        ),
    ]


def inference_cases() -> list[Case]:
    tv = lambda name, bs, **kw: vision("torchvision", name, bs, labels=False, **kw)  # noqa: E731
    mistral = causal_lm("MistralConfig", tiny_llama(4), MISTRAL, (2, 2048))
    llama = causal_lm("LlamaConfig", tiny_llama(), LLAMA_MHA, (4, 1024))
    qwen2 = causal_lm("Qwen2Config", tiny_llama(2, tie=True), QWEN2, (4, 1024))
    gpt2 = causal_lm("GPT2Config", GPT2_TINY, GPT2, (8, 1024))
    cases = [
        Case("inf-bert-bf16-mixed", "inference", "bert", bert_mlm, "bf16-mixed"),
        Case("inf-mistral-bf16-mixed", "inference", "mistral", mistral, "bf16-mixed"),
        Case("inf-t5-small-bf16-mixed", "inference", "t5", t5, "bf16-mixed"),
        Case("inf-gpt2-bf16-mixed", "inference", "gpt2", gpt2, "bf16-mixed"),
        Case(
            "inf-llama-bf16-pure-inference-mode",
            "inference",
            "llama",
            llama,
            "bf16",
            mode="inference_mode",
        ),
        Case(
            "inf-qwen2-fp32-inference-mode",
            "inference",
            "qwen2",
            qwen2,
            "fp32",
            mode="inference_mode",
        ),
        Case(
            "inf-tv-vit-b16-bf16-mixed",
            "inference",
            "vit",
            tv("vit_b_16", 128, tiny_kwargs={"image_size": 64}),
            "bf16-mixed",
            image=True,
            needs=("torchvision",),
        ),
        Case(
            "inf-tv-convnext-tiny-bf16-mixed",
            "inference",
            "convnext",
            tv("convnext_tiny", 128),
            "bf16-mixed",
            image=True,
            needs=("torchvision",),
        ),
        Case(
            "inf-tv-resnet50-bf16-mixed",
            "inference",
            "resnet",
            tv("resnet50", 256),
            "bf16-mixed",
            image=True,
            needs=("torchvision",),
        ),
        Case(
            "inf-tv-resnet50-fp32-inference-mode",
            "inference",
            "resnet",
            tv("resnet50", 128),
            "fp32",
            mode="inference_mode",
            image=True,
            needs=("torchvision",),
        ),
        Case(
            "inf-nn-transformer-fp32-inference-mode",
            "inference",
            "nn_transformer",
            transformer_encoder,
            "fp32",
            mode="inference_mode",
            needs=(),
        ),
    ]
    return [
        dataclasses.replace(c, mode="no_grad" if c.mode == "train" else c.mode, optimizer=None)
        for c in cases
    ]
