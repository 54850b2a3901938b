"""Predicted optimizer state and gradients, to the byte, with the model-state techniques.

Sizes are worked out by hand from the parameters' shapes: the caching allocator gives each
tensor a block of a multiple of 512 bytes (``_block``).
"""

from __future__ import annotations

import torch
from torch import nn

from memfit.profile import Category, Phase
from memfit.techniques import OptimizerInBackward
from memfit.trace.estimate import trace_step

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
