"""Predicted optimizer state and gradients, to the byte, with the model-state techniques.

Sizes are worked out by hand from the parameters' shapes: the caching allocator gives each
tensor a block of a multiple of 512 bytes (``_block``).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memfit.profile import Category, Phase
from memfit.techniques import Freeze, LowBitOptimizer, OptimizerInBackward, PureBF16
from memfit.trace.estimate import trace_step
from memfit.trace.low_bit import STEP_TEMPORARIES

WEIGHT = 256 * 256 * 4  # one float32 256 x 256 weight: 262,144 bytes


def _block(size: int) -> int:
    """The caching allocator's block for ``size`` bytes (multiples of 512)."""
    return -(-size // 512) * 512


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(256, 256, bias=False), nn.Tanh(), nn.Linear(256, 256, bias=False)
    )


def _trace(plan=None, optimizer="adamw", **options):
    return trace_step(
        _mlp(),
        torch.randn(4, 256),
        optimizer=optimizer,
        precision="fp32",
        plan=plan,
        loss_fn=lambda output, batch: output.mean(),
        **options,
    )


def test_in_backward_one_gradient_at_a_time_and_the_state_made_in_backward() -> None:
    plain, inb = _trace().profile, _trace([OptimizerInBackward()]).profile
    # AdamW: exp_avg and exp_avg_sq of both weights, alive at the peak in either case
    assert plain.by_category[Category.OPTIMIZER] == 2 * 2 * WEIGHT
    assert inb.by_category[Category.OPTIMIZER] == 2 * 2 * WEIGHT
    assert plain.by_category[Category.GRAD] == 2 * WEIGHT  # both gradients at the step
    assert inb.by_category[Category.GRAD] == WEIGHT  # the other is freed already
    assert plain.peak_phase is Phase.OPTIMIZER  # the multi-tensor step's temporaries
    assert inb.peak_phase is Phase.BACKWARD
    assert inb.peak_allocated < plain.peak_allocated


def test_in_backward_with_plain_sgd_saves_one_gradient_at_the_end_of_backward() -> None:
    def sgd(params):
        return torch.optim.SGD(params, lr=0.1)

    plain, inb = _trace(optimizer=sgd).profile, _trace([OptimizerInBackward()], sgd).profile
    assert plain.by_category[Category.OPTIMIZER] == inb.by_category[Category.OPTIMIZER] == 0
    assert plain.by_category[Category.GRAD] == 2 * WEIGHT
    assert inb.by_category[Category.GRAD] == WEIGHT
    # the plain peak: the first layer's gradient made while the second's is alive (with the
    # 4 x 256 float32 gradient of the tanh); in backward, the peak moves to the second
    # layer's gradient, made while the loss's, the tanh's output and its gradient are alive
    assert plain.peak_allocated - inb.peak_allocated == WEIGHT - 2 * _block(4 * 256 * 4)


class Shapes(nn.Module):
    """Weights torchao quantizes or keeps plain: 65,536 and 4,096 elements (quantized), 4,112
    (at least 4,096 but no multiple of a block: plain), a 256-element bias (plain)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(256, 256)
        self.b = nn.Linear(256, 16, bias=False)
        self.c = nn.Linear(16, 257, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


# per moment and tensor: (codes, scales, code map) bytes, worked out from torchao 0.18's
# layouts (torchao/optim/subclass_{8bit,4bit,fp8}.py): 8-bit codes one byte per element, a
# float32 scale per 256 elements, a 256-entry float32 code map; 4-bit codes two per byte, a
# scale per 128 elements, a 16-entry code map; fp8 codes one byte, a scale per 256, no map
QUANTIZED = {
    "8bit": {65536: (65536, 256 * 4, 256 * 4), 4096: (4096, 16 * 4, 256 * 4)},
    "4bit": {65536: (32768, 512 * 4, 16 * 4), 4096: (2048, 32 * 4, 16 * 4)},
    "fp8": {65536: (65536, 256 * 4, 0), 4096: (4096, 16 * 4, 0)},
}
PLAIN = (4112 * 4, 256 * 4)  # float32 moments of the 4,112-element weight and the bias


@pytest.mark.parametrize("kind", sorted(QUANTIZED))
def test_low_bit_state_to_the_byte(kind: str) -> None:
    pytest.importorskip("torchao.optim")
    moment = sum(_block(n) for parts in QUANTIZED[kind].values() for n in parts if n)
    moment += sum(_block(n) for n in PLAIN)
    traced = trace_step(
        Shapes(),
        torch.randn(4, 256),
        optimizer="adamw",
        precision="fp32",
        plan=[LowBitOptimizer(kind)],
        loss_fn=lambda output, batch: output.mean(),
    )
    assert traced.profile.by_category[Category.OPTIMIZER] == 2 * moment  # two moments
    # the compiled update's temporaries, one parameter at a time, in the steady step
    steady = range(traced.marks["optimizer1"], traced.marks["zero_grad"])
    made = [traced.trace.events[i] for i in steady if traced.trace.events[i] > 0]
    temporaries = sorted(
        traced.trace.allocations[key].size
        for key in made
        if traced.trace.allocations[key].op.startswith("empty")
    )
    block = 128 if kind == "4bit" else 256
    expected = [
        int(per_element * numel + per_block * numel // block)
        for numel in (65536, 4096)  # the quantized weights; the plain moments need none
        for per_element, per_block in STEP_TEMPORARIES[_SUBCLASS[kind]]
        for _ in ("exp_avg", "exp_avg_sq")
    ]
    assert temporaries == sorted(expected)
    # a quantized moment is a fraction of float32's; the plain ones keep their size
    full = trace_step(
        Shapes(),
        torch.randn(4, 256),
        optimizer="adamw",
        precision="fp32",
        loss_fn=lambda output, batch: output.mean(),
    )
    assert full.profile.by_category[Category.OPTIMIZER] > 3 * moment


_SUBCLASS = {"8bit": "OptimState8bit", "4bit": "OptimState4bit", "fp8": "OptimStateFp8"}


def test_pure_bf16_halves_weights_gradients_and_state() -> None:
    profile = _trace([PureBF16()]).profile
    assert profile.precision == "bf16"
    assert profile.by_category[Category.PARAM] == 2 * WEIGHT // 2
    assert profile.by_category[Category.GRAD] == 2 * WEIGHT // 2  # both, at the step
    assert profile.by_category[Category.OPTIMIZER] == 2 * 2 * WEIGHT // 2


def test_freeze_leaves_out_gradients_and_state_of_the_frozen() -> None:
    profile = _trace([Freeze(("0",))]).profile
    assert profile.by_category[Category.PARAM] == 2 * WEIGHT
    assert profile.by_category[Category.GRAD] == WEIGHT
    assert profile.by_category[Category.OPTIMIZER] == 2 * WEIGHT


class Adapted(nn.Module):
    """A frozen base weight with a trainable low-rank update (LoRA, by hand)."""

    def __init__(self, rank: int = 8) -> None:
        super().__init__()
        self.base = nn.Linear(256, 256, bias=False).requires_grad_(False)
        self.down = nn.Linear(256, rank, bias=False)
        self.up = nn.Linear(rank, 256, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def test_a_frozen_base_needs_no_technique() -> None:
    traced = trace_step(
        Adapted(), torch.randn(4, 256), precision="fp32", loss_fn=lambda out, b: out.mean()
    )
    lora = 2 * _block(8 * 256 * 4)  # the two trainable factors
    assert traced.profile.by_category[Category.PARAM] == WEIGHT + lora
    assert traced.profile.by_category[Category.OPTIMIZER] == 2 * lora
    assert traced.record.grad_bytes == {"down.weight": 8 * 256 * 4, "up.weight": 8 * 256 * 4}


def test_a_peft_lora_model_is_predicted_with_its_trainable_parameters_only() -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=97,
        max_position_embeddings=32,
    )
    # built here, then traced: peft's model cannot be built under fake tensors yet (its
    # _apply cannot swap Linear.weight; issue 12)
    model = get_peft_model(
        LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = {"input_ids": torch.randint(0, 97, (2, 16)), "labels": torch.randint(0, 97, (2, 16))}
    traced = trace_step(model, batch, precision="fp32")
    state = 2 * sum(_block(p.numel() * 4) for p in trainable.values())  # AdamW's two moments
    assert traced.profile.by_category[Category.OPTIMIZER] == state
    assert traced.record.grad_bytes == {n: p.numel() * 4 for n, p in trainable.items()}
