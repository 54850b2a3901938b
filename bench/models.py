"""Models the benchmarks run besides memfit's zoo: Hugging Face and torchvision, from configs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hf_gpt2():
    import transformers

    config = transformers.GPT2Config(attn_implementation="sdpa")
    return transformers.GPT2LMHeadModel(config)


def hf_gpt2_medium():
    import transformers

    config = transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16, attn_implementation="sdpa")
    return transformers.GPT2LMHeadModel(config)


def hf_llama():
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        max_position_embeddings=2048,
        attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(config)


def llama_3b_config(size: str = "full"):
    """Llama-3.2-3B's shape (hidden 3072, 28 layers, 24 heads, 8 KV heads, MLP 8192, vocabulary
    128256, tied embeddings), 4096 positions; ``"tiny"``: the same layout at toy size; ``"small"``:
    33M parameters whose weights outweigh a short sequence's activations (CPU smoke runs)."""
    import transformers

    if size == "tiny":
        sizes = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2)
        sizes.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    elif size == "small":
        sizes = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=2)
        sizes.update(num_attention_heads=8, num_key_value_heads=4, vocab_size=8000)
    else:
        sizes = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28)
        sizes.update(num_attention_heads=24, num_key_value_heads=8, vocab_size=128256)
    return transformers.LlamaConfig(
        **sizes,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        attn_implementation="sdpa",
    )


def hf_llama_3b(size: str = "full"):
    import transformers

    return transformers.LlamaForCausalLM(llama_3b_config(size))


def tv_resnet50():
    import torchvision

    return torchvision.models.resnet50()


def image_forward(model, batch):
    return model(batch[0])


def image_loss(output, batch):
    return F.cross_entropy(output, batch[1])


# name -> (builder, input spec, loss_fn, forward); None means memfit's defaults
EXTERNAL = {
    "hf-gpt2": (hf_gpt2, "input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257", None, None),
    "hf-gpt2-medium": (
        hf_gpt2_medium,
        "input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257",
        None,
        None,
    ),
    "hf-llama-1b": (
        hf_llama,
        "input_ids=int64[4,2048]<32000 labels=int64[4,2048]<32000",
        None,
        None,
    ),
    "tv-resnet50": (
        tv_resnet50,
        "float32[128,3,224,224] int64[128]<1000",
        image_loss,
        image_forward,
    ),
}


def tensors_of(batch):
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, dict):
        return list(batch.values())
    return list(batch)


# --- models the cost model is calibrated and validated on (bench/costs.py, bench/plans.py) ---


def hf_qwen2_shaped(tiny: bool = False):
    """Qwen2-0.5B's shape: 24 layers, hidden 896, 14 heads (2 key-value), tied 151,936 vocab."""
    import transformers

    size = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24)
    size.update(num_attention_heads=14, num_key_value_heads=2, vocab_size=151936)
    if tiny:
        size = dict(hidden_size=56, intermediate_size=128, num_hidden_layers=2)
        size.update(num_attention_heads=7, num_key_value_heads=1, vocab_size=1024)
    config = transformers.Qwen2Config(
        **size, tie_word_embeddings=True, max_position_embeddings=2048, attn_implementation="sdpa"
    )
    return transformers.Qwen2ForCausalLM(config)


def hf_mistral_8l(tiny: bool = False):
    """Mistral-7B's layer shape (hidden 4096, MLP 14336, 32 heads, 8 key-value), 8 layers."""
    import transformers

    size = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=8)
    size.update(num_attention_heads=32, num_key_value_heads=8, vocab_size=32000)
    if tiny:
        size = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2)
        size.update(num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
    config = transformers.MistralConfig(
        **size, max_position_embeddings=4096, attn_implementation="sdpa"
    )
    return transformers.MistralForCausalLM(config)


def hf_bert_base(tiny: bool = False):
    """BERT-base with its masked-LM head (bs 32, seq 512 in the benchmarks)."""
    import transformers

    size = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12)
    size.update(num_attention_heads=12)
    if tiny:
        size = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
    config = transformers.BertConfig(**size, attn_implementation="sdpa")
    return transformers.BertForMaskedLM(config)


def transformer_encoder(tiny: bool = False):
    """A 6-layer ``nn.TransformerEncoder`` (d_model 1024, 16 heads, FFN 4096, batch first)."""
    dim, heads, ffn = (32, 2, 64) if tiny else (1024, 16, 4096)
    layer = torch.nn.TransformerEncoderLayer(dim, heads, ffn, batch_first=True)
    return torch.nn.TransformerEncoder(
        layer, num_layers=2 if tiny else 6, enable_nested_tensor=False
    )


def tv_resnet50_sized(tiny: bool = False):
    import torchvision

    if tiny:
        return torchvision.models.resnet18(num_classes=10)
    return torchvision.models.resnet50()


def lm_spec(batch: int, seq: int, vocab: int) -> str:
    return f"input_ids=int64[{batch},{seq}]<{vocab} labels=int64[{batch},{seq}]<{vocab}"


# name -> (builder(tiny), batch spec, tiny batch spec); loss and forward: CALIBRATION_LOSS
# or memfit's defaults
CALIBRATION = {
    "hf-gpt2": (
        lambda tiny=False: hf_gpt2_sized(tiny),
        lm_spec(8, 1024, 50257),
        lm_spec(2, 32, 96),
    ),
    "hf-llama-1b": (
        lambda tiny=False: hf_llama_sized(tiny),
        lm_spec(4, 2048, 32000),
        lm_spec(2, 32, 96),
    ),
    "qwen2-shaped": (hf_qwen2_shaped, lm_spec(4, 1024, 151936), lm_spec(2, 32, 1024)),
    "mistral-8l": (hf_mistral_8l, lm_spec(4, 1024, 32000), lm_spec(2, 32, 512)),
    "transformer-encoder": (transformer_encoder, "float32[16,512,1024]", "float32[2,16,32]"),
    "hf-bert-base": (hf_bert_base, lm_spec(32, 512, 30522), lm_spec(2, 32, 30522)),
    "tv-resnet50": (
        tv_resnet50_sized,
        "float32[128,3,224,224] int64[128]<1000",
        "float32[8,3,32,32] int64[8]<10",
    ),
}
CALIBRATION_LOSS = {"tv-resnet50": (image_loss, image_forward)}  # others: memfit's defaults


def hf_gpt2_sized(tiny: bool = False):
    if not tiny:
        return hf_gpt2()
    import transformers

    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=96, n_positions=64, attn_implementation="sdpa"
    )
    return transformers.GPT2LMHeadModel(config)


def hf_llama_sized(tiny: bool = False):
    if not tiny:
        return hf_llama()
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=96,
        max_position_embeddings=64,
        attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(config)
