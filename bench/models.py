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
