"""User mistakes give a MemfitError that names the value, what is allowed and the fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import DeviceError, InvalidInputError, MemfitError, UnsupportedModelError
from tests.models import tiny_mlp


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'h300'.*h100-80gb.*memfit devices"):
        memfit.estimate(tiny_mlp(), "float32[4,32]", device="h300")


def test_local_gpu_without_one():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="sees none"):
        memfit.estimate(tiny_mlp(), "float32[4,32]", device="cuda")


def test_malformed_input_spec():
    with pytest.raises(InvalidInputError, match="malformed"):
        memfit.estimate(tiny_mlp(), "float32(4,32)")


def test_builder_that_raises():
    def broken():
        raise OSError("weights.bin not found")

    with pytest.raises(UnsupportedModelError, match=r"broken\(\) raised OSError: weights.bin"):
        memfit.estimate(broken, "float32[4,32]")


def test_builder_returning_something_else():
    with pytest.raises(UnsupportedModelError, match="not an nn.Module"):
        memfit.estimate(lambda: 42, "float32[4,32]")


def test_batch_that_does_not_fit_the_model():
    with pytest.raises(UnsupportedModelError, match="does not fit the model's forward"):
        memfit.estimate(tiny_mlp(), {"pixel_values": torch.zeros(4, 32)})


def test_shape_mismatch_inside_the_model():
    with pytest.raises(UnsupportedModelError, match="failed on fake tensors"):
        memfit.estimate(tiny_mlp(), "float32[4,31]")


def test_loss_that_is_not_a_scalar():
    with pytest.raises(UnsupportedModelError, match="must be a floating-point scalar.*shape"):
        memfit.estimate(tiny_mlp(), "float32[4,32]", loss_fn=lambda output, batch: output)


def test_loss_that_is_not_a_tensor():
    with pytest.raises(UnsupportedModelError, match="not a tensor"):
        memfit.estimate(tiny_mlp(), "float32[4,32]", loss_fn=lambda output, batch: 1.0)


def test_unknown_optimizer_and_precision():
    with pytest.raises(InvalidInputError, match="unknown optimizer 'adamx'.*adamw"):
        memfit.estimate(tiny_mlp(), "float32[4,32]", optimizer="adamx")
    with pytest.raises(InvalidInputError, match="unknown precision 'bf32'.*bf16-mixed"):
        memfit.estimate(tiny_mlp(), "float32[4,32]", precision="bf32")


def test_nothing_to_train_with_an_optimizer():
    frozen = nn.Linear(4, 4).requires_grad_(False)
    with pytest.raises(MemfitError, match="no trainable parameters.*optimizer=None"):
        memfit.estimate(frozen, "float32[2,4]", loss_fn=lambda o, b: o.sum())


def test_unknown_zoo_model():
    with pytest.raises(InvalidInputError, match="memfit zoo"):
        memfit.estimate("gpt3")


def test_no_batch():
    with pytest.raises(InvalidInputError, match="no batch given"):
        memfit.estimate(tiny_mlp())
