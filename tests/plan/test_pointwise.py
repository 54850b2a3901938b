"""The planner's cheap rungs: pointwise checkpointing and fused GELUs, found and used."""

from __future__ import annotations

import pytest
import torch

import memfit
from memfit.plan.candidates import Candidate
from memfit.plan.pointwise import pointwise_submodules
from memfit.plan.policies import Policy
from memfit.techniques import Checkpoint, FusedActivation
from memfit.trace.estimate import trace_step
from tests import helpers
from tests.helpers import VOCAB

BATCH = f"input_ids=int64[4,16]<{VOCAB} labels=int64[4,16]<{VOCAB}"
WIDE = f"input_ids=int64[64,16]<{VOCAB} labels=int64[64,16]<{VOCAB}"  # activations dominate


CONFIGS = {"gpt2": helpers.hf_gpt2().config, "llama": helpers.hf_llama().config}


def hf_gpt2():
    """``helpers.hf_gpt2`` in float32 (a dtype change cannot run on fake tensors)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(CONFIGS["gpt2"])


def hf_llama():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(CONFIGS["llama"])


def test_pointwise_submodules_are_the_ones_without_products():
    gpt2 = trace_step(hf_gpt2, BATCH, precision="bf16-mixed")
    assert pointwise_submodules(gpt2, "transformer.h.0") == ["mlp.act"]
    llama = trace_step(hf_llama, BATCH, precision="bf16-mixed")
    found = pointwise_submodules(llama, "model.layers.0")
    assert {"input_layernorm", "post_attention_layernorm"} <= set(found)
    assert not any("proj" in name or "attn" in name for name in found)


def test_a_candidate_turns_pointwise_blocks_into_submodule_checkpoints():
    pointwise = Policy("pointwise", (), 0, 0.0, ("mlp.act", "ln_2"))
    full = Policy("full", (), 0, 0.0)
    blocks = ("h.0", "h.1", "h.2")
    mixed = Candidate(full, blocks[:1], 1, 1, 0, 0, 0.0, blocks[1:], pointwise)
    assert mixed.techniques("lm_head") == (
        Checkpoint(modules=("h.0",)),
        Checkpoint(modules=("h.1.mlp.act", "h.1.ln_2", "h.2.mlp.act", "h.2.ln_2")),
    )
    only = Candidate(pointwise, blocks[:2], 1, 1, 0, 0, 0.0)
    assert only.techniques("lm_head") == (
        Checkpoint(modules=("h.0.mlp.act", "h.0.ln_2", "h.1.mlp.act", "h.1.ln_2")),
    )


@pytest.fixture(scope="module")
def gpt2_unmodified():
    return memfit.estimate(hf_gpt2, WIDE, precision="bf16-mixed")


@pytest.mark.slow
def test_the_planner_fuses_gelus_first_when_allowed(gpt2_unmodified):
    budget = gpt2_unmodified.peak_reserved - 2**20
    plan = memfit.plan(hf_gpt2, WIDE, budget=budget, precision="bf16-mixed", margin=0.0)
    fused = [t for t in plan.techniques if isinstance(t, FusedActivation)]
    assert [t.modules for t in fused] == [("transformer.h.0.mlp.act", "transformer.h.1.mlp.act")]
    assert plan.profile.peak_reserved <= budget
    assert "overrates what fusing the GELUs saves" in plan.notes[0]
    unmodified = [p for p in plan.frontier if p.label == "unmodified"]
    assert [p.peak_reserved for p in unmodified] == [gpt2_unmodified.peak_reserved]
    assert memfit.Plan.from_json(plan.to_json()).techniques == plan.techniques
    # the plan runs: its step gives the unfused model's loss, to rounding
    model, reference = hf_gpt2(), hf_gpt2()
    batch = {"input_ids": torch.randint(0, VOCAB, (64, 16))}
    batch["labels"] = batch["input_ids"]
    step = memfit.apply(plan, model, torch.optim.AdamW(model.parameters(), lr=0.0))
    loss = step(batch)
    torch.testing.assert_close(loss, reference(**batch).loss, rtol=2e-2, atol=0)  # bf16
    plan.undo(model)
    assert type(model.transformer.h[0].mlp.act).__name__ == "NewGELUActivation"
    without = memfit.plan(
        hf_gpt2, WIDE, budget=budget, precision="bf16-mixed", margin=0.0, allow=("checkpoint",)
    )
    assert not any(isinstance(t, FusedActivation) for t in without.techniques)
