"""Pure bf16 (weights and optimizer state in bf16) from a builder: the float32 weights the
builder made are cast and freed, as ``model.to(torch.bfloat16)`` frees them on the GPU."""

from __future__ import annotations

import memfit
from memfit.profile import Category
from memfit.trace.allocator import round_size
from tests.models import TINY_GPT2_INPUT, tiny_gpt2


def test_a_built_model_cast_to_bf16_keeps_no_float32_weights():
    built = memfit.estimate(tiny_gpt2, TINY_GPT2_INPUT, precision="bf16")
    given = memfit.estimate(tiny_gpt2(), TINY_GPT2_INPUT, precision="bf16")
    weights = sum(round_size(p.numel() * 2) for p in tiny_gpt2().parameters())
    assert built.by_category[Category.PARAM] == given.by_category[Category.PARAM] == weights
    # the builder's float32 copies are not alive at the peak (they were, as "other")
    assert built.by_category[Category.OTHER] == given.by_category[Category.OTHER]
    assert built.peak_allocated == given.peak_allocated
