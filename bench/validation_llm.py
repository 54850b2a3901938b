"""The validation zoo's decoder LLMs (Hugging Face transformers, built from configs): MHA, GQA,
MQA, tied and untied embeddings, a 256k vocabulary, an 8k sequence, a mixture of experts."""

from __future__ import annotations

from torch import nn

from validation_case import Builder, Case, named


# --- Hugging Face decoders --------------------------------------------------------------------
def causal_lm(config_name: str, tiny: dict, full: dict, batch: tuple[int, int], tiny_batch=(2, 32)):
    """``tiny -> (builder, spec)`` for an ``AutoModelForCausalLM`` of ``config_name``."""

    def make(is_tiny: bool) -> tuple[Builder, str]:
        import transformers  # optional and slow: imported when a case is built

        kwargs = tiny if is_tiny else full
        config = getattr(transformers, config_name)(**kwargs)

        def build() -> nn.Module:
            return transformers.AutoModelForCausalLM.from_config(config)

        bs, seq = tiny_batch if is_tiny else batch
        vocab = kwargs["vocab_size"]
        spec = f"input_ids=int64[{bs},{seq}]<{vocab} labels=int64[{bs},{seq}]<{vocab}"
        return named(build, config_name.removesuffix("Config").lower()), spec

    return make


def llama_dims(hidden, layers, heads, kv, inter, vocab, tie=False, **extra) -> dict:
    return dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        vocab_size=vocab,
        tie_word_embeddings=tie,
        max_position_embeddings=8192,
        **extra,
    )


def tiny_llama(kv_ratio: int = 1, tie: bool = False, **extra) -> dict:
    return llama_dims(64, 2, 4, 4 // kv_ratio, 128, 256, tie=tie, **extra)


LLAMA_MHA = llama_dims(2048, 8, 16, 16, 5632, 32000)
MISTRAL = llama_dims(4096, 4, 32, 8, 14336, 32000)  # Mistral-7B's width, 4 of its 32 layers
QWEN2 = llama_dims(896, 6, 14, 2, 4864, 151936, tie=True)  # Qwen2-0.5B's width, large vocab
GEMMA = dict(
    hidden_size=1024,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=1,
    head_dim=256,
    intermediate_size=8192,
    vocab_size=256000,
)
GEMMA_TINY = dict(GEMMA, hidden_size=64, num_hidden_layers=2, head_dim=16, intermediate_size=128)
GEMMA_TINY["vocab_size"] = 512
MIXTRAL = dict(llama_dims(1024, 4, 16, 4, 3584, 32000), num_local_experts=8, num_experts_per_tok=2)
MIXTRAL_TINY = dict(tiny_llama(2), num_local_experts=4, num_experts_per_tok=2)
GPT2 = dict(n_embd=768, n_layer=6, n_head=12, vocab_size=50257, n_positions=1024)
GPT2_TINY = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64)
BIGCODE = dict(n_embd=1024, n_layer=8, n_head=16, vocab_size=49152, multi_query=True)
BIGCODE_TINY = dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, multi_query=True)
NEOX = dict(
    hidden_size=1024,
    num_hidden_layers=8,
    num_attention_heads=16,
    intermediate_size=4096,
    vocab_size=50304,
    rotary_pct=0.25,
)
NEOX_TINY = dict(NEOX, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
NEOX_TINY.update(intermediate_size=128, vocab_size=256)
OPT = dict(
    hidden_size=768,
    num_hidden_layers=8,
    num_attention_heads=12,
    ffn_dim=3072,
    vocab_size=50272,
    word_embed_proj_dim=768,
)
OPT_TINY = dict(OPT, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
OPT_TINY.update(ffn_dim=128, vocab_size=256, word_embed_proj_dim=64)
PHI3 = llama_dims(1024, 8, 16, 16, 4096, 32064)
PHI3.pop("max_position_embeddings")
PHI3_TINY = tiny_llama(pad_token_id=0)
PHI3_TINY.pop("max_position_embeddings")


def llm_cases() -> list[Case]:
    llama = causal_lm("LlamaConfig", tiny_llama(), LLAMA_MHA, (4, 1024))
    mistral = causal_lm("MistralConfig", tiny_llama(4), MISTRAL, (2, 2048))
    qwen2 = causal_lm("Qwen2Config", tiny_llama(2, tie=True), QWEN2, (2, 1024))
    gpt2 = causal_lm("GPT2Config", GPT2_TINY, GPT2, (4, 1024))
    mqa = causal_lm(
        "LlamaConfig", tiny_llama(4), llama_dims(2048, 6, 16, 1, 5632, 32000), (4, 1024)
    )
    long = causal_lm(
        "LlamaConfig", tiny_llama(2), llama_dims(1024, 4, 16, 4, 2816, 32000), (1, 8192)
    )
    gemma = causal_lm("GemmaConfig", GEMMA_TINY, GEMMA, (2, 1024))
    mixtral = causal_lm("MixtralConfig", MIXTRAL_TINY, MIXTRAL, (2, 1024))
    bigcode = causal_lm("GPTBigCodeConfig", BIGCODE_TINY, BIGCODE, (4, 1024))
    neox = causal_lm("GPTNeoXConfig", NEOX_TINY, NEOX, (4, 1024))
    opt = causal_lm("OPTConfig", OPT_TINY, OPT, (4, 1024))
    phi3 = causal_lm("Phi3Config", PHI3_TINY, PHI3, (4, 1024))
    return [
        Case("gpt2-fp32", "llm", "gpt2", gpt2, "fp32"),
        Case("gpt2-bf16-mixed", "llm", "gpt2", gpt2, "bf16-mixed"),
        Case("gpt2-fp16-mixed", "llm", "gpt2", gpt2, "fp16-mixed"),
        Case("llama-mha-bf16-mixed-fused", "llm", "llama", llama, "bf16-mixed", "adamw-fused"),
        Case("llama-mha-bf16-pure", "llm", "llama", llama, "bf16"),
        Case("llama-mha-fp32-forloop", "llm", "llama", llama, "fp32", "adamw-for-loop"),
        Case("mistral-gqa-fp32", "llm", "mistral", mistral, "fp32"),
        Case("mistral-gqa-bf16-mixed", "llm", "mistral", mistral, "bf16-mixed"),
        Case("qwen2-gqa-tied-fp32", "llm", "qwen2", qwen2, "fp32"),
        Case("qwen2-gqa-tied-bf16-mixed", "llm", "qwen2", qwen2, "bf16-mixed"),
        Case("llama-mqa-fp32", "llm", "llama", mqa, "fp32"),
        Case("llama-long-8k-bf16-mixed", "llm", "llama", long, "bf16-mixed"),
        Case("gemma-vocab256k-bf16-mixed", "llm", "gemma", gemma, "bf16-mixed"),
        Case("mixtral-moe-bf16-mixed", "llm", "mixtral", mixtral, "bf16-mixed"),
        Case("mixtral-moe-fp32", "llm", "mixtral", mixtral, "fp32"),
        Case("bigcode-mqa-bf16-mixed", "llm", "gpt_bigcode", bigcode, "bf16-mixed"),
        Case("neox-fp16-mixed", "llm", "gpt_neox", neox, "fp16-mixed"),
        Case("opt-fp32-sgd", "llm", "opt", opt, "fp32", "sgd"),
        Case("phi3-bf16-mixed-foreach", "llm", "phi3", phi3, "bf16-mixed", "adamw-foreach"),
    ]
