"""The step-time model on the unmodified Hugging Face loss against the chunked loss.

Hugging Face's causal-LM loss upcasts the logits to float32 and runs cross-entropy over the
whole vocabulary: several passes over a float32 tensor of batch x sequence x vocabulary in
forward and backward. The chunked loss computes each chunk's logits and their gradient in
place, in the autocast dtype. The model prices both by the bytes they move, so the GPU time
the chunked loss saves grows with the vocabulary; on a step the CPU bounds that saving does
not shorten the step (measured on the H200: the Qwen2 shape's chunked loss +2.7% and +8.9%
over the unmodified step in alternated A/B rows, runs 1 and 2 of bench/plans.py).
"""

from __future__ import annotations

import pytest

from memfit.techniques import ChunkedLoss
from memfit.trace.estimate import trace_step

transformers = pytest.importorskip("transformers")

SETTINGS = dict(device="h200", optimizer="adamw-fused", precision="bf16-mixed")


def _qwen2_like(vocab: int):
    def build():
        config = transformers.Qwen2Config(
            hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=1, vocab_size=vocab, tie_word_embeddings=True,
            max_position_embeddings=512, attn_implementation="sdpa",
        )  # fmt: skip
        return transformers.Qwen2ForCausalLM(config)

    return build


def _device_s(vocab: int, plan: list) -> float:
    spec = f"input_ids=int64[4,512]<{vocab} labels=int64[4,512]<{vocab}"
    traced = trace_step(_qwen2_like(vocab), spec, plan=plan, **SETTINGS)
    return sum(op.seconds for op in traced.record.ops)


@pytest.mark.slow
def test_what_the_chunked_loss_saves_on_the_gpu_grows_with_the_vocabulary():
    saved = {}
    for vocab in (8192, 65536):
        unmodified = _device_s(vocab, [])
        chunked = _device_s(vocab, [ChunkedLoss(4)])
        saved[vocab] = unmodified - chunked
    assert saved[8192] > 0
    # 8x the vocabulary: the float32 logits' passes grow 8x, the rest of the step not at all
    assert saved[65536] > 5 * saved[8192]
