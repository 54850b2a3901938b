"""The validation zoo beyond decoder LLMs: encoders, encoder-decoders, speech, vision (torchvision
and timm), plain ``nn.TransformerEncoder``, peft LoRA, partly frozen models, and inference."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from validation_case import Builder, Case, named

Make = Callable[[bool], tuple[Builder, str]]


def hf_model(class_name: str, config_name: str, tiny: dict, full: dict, spec: Callable) -> Make:
    """``tiny -> (builder, spec)`` for ``transformers.<class_name>`` built from a config."""

    def make(is_tiny: bool) -> tuple[Builder, str]:
        import transformers  # optional and slow: imported when a case is built

        kwargs = tiny if is_tiny else full
        config = getattr(transformers, config_name)(**kwargs)

        def build() -> nn.Module:
            return getattr(transformers, class_name)(config)

        return named(build, class_name.lower()), spec(is_tiny, kwargs)

    return make


def tokens(bs: int, seq: int, vocab: int, *, labels: str = "same", mask: bool = False) -> str:
    spec = f"input_ids=int64[{bs},{seq}]<{vocab}"
    if mask:
        spec += f" attention_mask=int64[{bs},{seq}]<2"
    if labels == "same":
        spec += f" labels=int64[{bs},{seq}]<{vocab}"
    elif labels == "class":
        spec += f" labels=int64[{bs}]<2"
    elif labels.startswith("decoder:"):  # decoder_input_ids of that length, for inference
        spec += f" decoder_input_ids=int64[{bs},{labels.split(':')[1]}]<{vocab}"
    elif labels != "none":  # an encoder-decoder's target length
        spec += f" labels=int64[{bs},{labels}]<{vocab}"
    return spec


BERT = dict(vocab_size=30522)  # BERT-base
BERT_TINY = dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
BERT_TINY["intermediate_size"] = 128
ROBERTA = dict(vocab_size=50265, max_position_embeddings=514)
ROBERTA_TINY = dict(BERT_TINY, max_position_embeddings=66)
DEBERTA = dict(
    vocab_size=128100,
    hidden_size=768,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=3072,
    relative_attention=True,
    position_buckets=256,
    pos_att_type=["p2c", "c2p"],
    max_relative_positions=-1,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
)
DEBERTA_TINY = dict(DEBERTA, vocab_size=256, hidden_size=64, num_hidden_layers=2)
DEBERTA_TINY.update(num_attention_heads=4, intermediate_size=128, position_buckets=16)
T5 = dict(vocab_size=32128, pad_token_id=0, decoder_start_token_id=0)  # t5-small: the defaults
T5_TINY = dict(T5, vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
BART = dict(
    vocab_size=50265,
    d_model=768,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
)
BART_TINY = dict(BART, vocab_size=256, d_model=64, encoder_layers=2, decoder_layers=2)
BART_TINY.update(encoder_attention_heads=4, decoder_attention_heads=4)
BART_TINY.update(encoder_ffn_dim=128, decoder_ffn_dim=128)
WHISPER = dict(BART, vocab_size=51865, encoder_layers=12, decoder_layers=12, num_mel_bins=80)
WHISPER_TINY = dict(BART_TINY, vocab_size=51865, num_mel_bins=80)
WHISPER_TINY.update(max_source_positions=50, max_target_positions=64)


def bert_spec(labels: str, bs: int, seq: int, mask: bool = True) -> Callable:
    return lambda tiny, kw: tokens(
        2 if tiny else bs, 16 if tiny else seq, kw["vocab_size"], labels=labels, mask=mask
    )


def whisper_spec(tiny: bool, kw: dict) -> str:
    bs, frames, target = (2, 100, 16) if tiny else (4, 3000, 128)
    return (
        f"input_features=float32[{bs},80,{frames}] labels=int64[{bs},{target}]<{kw['vocab_size']}"
    )


bert_mlm = hf_model("BertForMaskedLM", "BertConfig", BERT_TINY, BERT, bert_spec("same", 8, 512))
roberta = hf_model(
    "RobertaForSequenceClassification",
    "RobertaConfig",
    ROBERTA_TINY,
    ROBERTA,
    bert_spec("class", 16, 256),
)
deberta = hf_model(
    "DebertaV2ForSequenceClassification",
    "DebertaV2Config",
    DEBERTA_TINY,
    DEBERTA,
    bert_spec("class", 8, 512, mask=False),
)
t5 = hf_model(
    "T5ForConditionalGeneration", "T5Config", T5_TINY, T5, bert_spec("128", 16, 512, mask=False)
)
bart = hf_model(
    "BartForConditionalGeneration",
    "BartConfig",
    BART_TINY,
    BART,
    bert_spec("128", 8, 512, mask=False),
)
whisper = hf_model(
    "WhisperForConditionalGeneration", "WhisperConfig", WHISPER_TINY, WHISPER, whisper_spec
)


def encoder_cases() -> list[Case]:
    return [
        Case("bert-mlm-fp32", "encoder", "bert", bert_mlm, "fp32"),
        Case("bert-mlm-bf16-mixed", "encoder", "bert", bert_mlm, "bf16-mixed"),
        Case("roberta-cls-fp16-mixed", "encoder", "roberta", roberta, "fp16-mixed"),
        Case("deberta-v2-fp32", "encoder", "deberta_v2", deberta, "fp32"),
        Case("deberta-v2-bf16-mixed", "encoder", "deberta_v2", deberta, "bf16-mixed"),
        Case("t5-small-fp32", "encoder", "t5", t5, "fp32"),
        Case("t5-small-bf16-mixed", "encoder", "t5", t5, "bf16-mixed"),
        Case("bart-base-fp32", "encoder", "bart", bart, "fp32"),
        Case("bart-base-bf16-mixed", "encoder", "bart", bart, "bf16-mixed"),
        Case("whisper-small-bf16-mixed", "encoder", "whisper", whisper, "bf16-mixed"),
        Case("whisper-small-fp32", "encoder", "whisper", whisper, "fp32"),
    ]


# --- vision -----------------------------------------------------------------------------------
def images(bs: int, res: int, *, dtype: str = "float32", labels: bool = True) -> str:
    spec = f"{dtype}[{bs},3,{res},{res}]"
    return spec + f" int64[{bs}]<1000" if labels else spec


def vision(
    library: str,
    name: str,
    bs: int,
    res: int = 224,
    tiny_res: int = 64,
    dtype: str = "float32",
    labels: bool = True,
    tiny_kwargs: dict | None = None,
) -> Make:
    """A torchvision or timm model by name; ``tiny`` keeps the model and shrinks the batch."""

    def make(is_tiny: bool) -> tuple[Builder, str]:
        kwargs = (tiny_kwargs or {}) if is_tiny else {}

        def build() -> nn.Module:
            if library == "timm":
                import timm

                return timm.create_model(name, pretrained=False, **kwargs)
            import torchvision

            return getattr(torchvision.models, name)(**kwargs)

        bs_ = 1 if is_tiny else bs
        spec = images(bs_, tiny_res if is_tiny else res, dtype=dtype, labels=labels)
        return named(build, f"{library}_{name}"), spec

    return make


def vision_cases() -> list[Case]:
    tv = lambda name, bs, **kw: vision("torchvision", name, bs, **kw)  # noqa: E731
    tm = lambda name, bs, **kw: vision("timm", name, bs, **kw)  # noqa: E731
    vit = tv("vit_b_16", 64, tiny_kwargs={"image_size": 64})
    resnet = tv("resnet50", 64)
    cases = [
        ("tv-resnet50-fp32", "resnet", resnet, "fp32", "adamw"),
        ("tv-resnet50-bf16-mixed", "resnet", resnet, "bf16-mixed", "adamw"),
        ("tv-resnext50-grouped-fp32-sgd", "resnext", tv("resnext50_32x4d", 64), "fp32", "sgd"),
        ("tv-regnet-y-400mf-fp32", "regnet", tv("regnet_y_400mf", 128), "fp32", "adamw"),
        ("tv-regnet-x-1.6gf-bf16-mixed", "regnet", tv("regnet_x_1_6gf", 64), "bf16-mixed", "adamw"),
        ("tv-efficientnet-b0-fp32", "efficientnet", tv("efficientnet_b0", 128), "fp32", "adamw"),
        (
            "tv-efficientnet-b0-bf16-mixed",
            "efficientnet",
            tv("efficientnet_b0", 128),
            "bf16-mixed",
            "adamw",
        ),
        (
            "tv-mobilenet-v3-fp16-mixed",
            "mobilenet",
            tv("mobilenet_v3_large", 128),
            "fp16-mixed",
            "adamw",
        ),
        ("tv-convnext-tiny-fp32", "convnext", tv("convnext_tiny", 64), "fp32", "adamw"),
        (
            "tv-convnext-tiny-bf16-mixed",
            "convnext",
            tv("convnext_tiny", 64),
            "bf16-mixed",
            "adamw-fused",
        ),
        ("tv-vit-b16-bf16-mixed", "vit", vit, "bf16-mixed", "adamw"),
        ("tv-vit-b16-fp16-mixed", "vit", vit, "fp16-mixed", "adamw"),
        (
            "timm-vit-small-bf16-mixed",
            "vit",
            tm("vit_small_patch16_224", 64, tiny_kwargs={"img_size": 64}),
            "bf16-mixed",
            "adamw",
        ),
        (
            "timm-swin-tiny-bf16-mixed",
            "swin",
            tm("swin_tiny_patch4_window7_224", 32, tiny_res=224),
            "bf16-mixed",
            "adamw",
        ),
        ("timm-efficientnet-b0-fp32", "efficientnet", tm("efficientnet_b0", 64), "fp32", "adamw"),
        (
            "timm-mobilenetv3-depthwise-bf16-mixed",
            "mobilenet",
            tm("mobilenetv3_large_100", 128),
            "bf16-mixed",
            "adamw",
        ),
        ("timm-regnety-016-fp32-sgd", "regnet", tm("regnety_016", 64), "fp32", "sgd"),
        ("timm-convnext-nano-fp32", "convnext", tm("convnext_nano", 64), "fp32", "adamw-for-loop"),
    ]
    return [
        Case(name, "vision", arch, make, precision, optimizer, image=True, needs=needs(name))
        for name, arch, make, precision, optimizer in cases
    ]


def needs(name: str) -> tuple[str, ...]:
    return ("timm",) if name.startswith("timm-") else ("torchvision",)
