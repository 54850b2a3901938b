"""Checkpoint: identical gradients, what is kept in forward, recompute FLOPs, BatchNorm, errors."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import memfit.apply.checkpoint as checkpoint_module
from memfit.apply.checkpoint import is_checkpointed
from memfit.errors import InvalidInputError, MemfitError
from memfit.step.context import ApplyContext
from memfit.step.registry import apply_techniques
from memfit.step.undo import undo_all
from memfit.techniques import Checkpoint
from memfit.zoo.resnet import ResNet, ResNetConfig
from tests.helpers import (
    Net,
    StorageTracker,
    assert_same_grads,
    hf_gpt2,
    hf_llama,
    loss_and_grads,
    tiny_gpt2,
    tiny_llama,
    token_batch,
)

FULL = ()
SELECTIVE = ("addmm", "mm", "bmm", "_scaled_dot_product_flash_attention_for_cpu")


def checkpointed(model, *patterns, save=FULL):
    apply_techniques(model, [Checkpoint(patterns, save)], context=ApplyContext())
    return model


@pytest.mark.parametrize("save", [FULL, SELECTIVE], ids=["full", "selective"])
@pytest.mark.parametrize(
    ("build", "pattern"),
    [
        (lambda: tiny_gpt2(dropout=0.1), "layers.*"),  # dropout on: RNG state is replayed
        (tiny_llama, "layers.*"),
        (hf_gpt2, "transformer.h.*"),
        (hf_llama, "model.layers.*"),  # HF calls its layers with keyword arguments
        (hf_gpt2, "transformer.h.*.mlp.act"),  # pointwise: a submodule without products
        (hf_llama, "model.layers.*.*_layernorm"),
    ],
    ids=["zoo-gpt2", "zoo-llama", "hf-gpt2", "hf-llama", "hf-gpt2-gelu", "hf-llama-norms"],
)
def test_gradients_identical(build, pattern, save):
    batch = token_batch()
    plain, model = build(), checkpointed(build(), pattern, save=save)
    torch.manual_seed(3)
    loss, grads = loss_and_grads(plain, batch)
    torch.manual_seed(3)
    loss_ckpt, grads_ckpt = loss_and_grads(model, batch)
    assert torch.equal(loss, loss_ckpt)
    assert_same_grads(grads, grads_ckpt, exact=True)


def test_keyword_tensor_arguments_get_gradients():
    x = torch.randn(5, 8, dtype=torch.float64)
    plain, wrapped = Net().double(), checkpointed(Net().double(), "layers.*")
    grads = []
    for model in (plain, wrapped):
        scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        model(x, scale=scale).pow(2).mean().backward()
        grads.append(scale.grad)
    assert grads[0] is not None and torch.equal(grads[0], grads[1])


class _Reader(torch.nn.Module):
    """Reads the list of earlier features it is given: the last one, or all concatenated (as
    torchvision's DenseNet layers do); may append its own output to a list it is handed."""

    def __init__(self, width: int, concat: bool) -> None:
        super().__init__()
        self.concat = concat
        self.linear = torch.nn.Linear(width, 4, dtype=torch.float64)

    def forward(self, features, outputs=None):
        x = torch.cat(features, dim=-1) if self.concat else features[-1]
        y = torch.tanh(self.linear(x))
        if outputs is not None:
            outputs.append(y)
        return y


class _Growing(torch.nn.Module):
    """Hands each layer the feature list, then appends the layer's output to it."""

    def __init__(self, concat: bool) -> None:
        super().__init__()
        widths = [4 * (i + 1) if concat else 4 for i in range(3)]
        self.layers = torch.nn.ModuleList(_Reader(w, concat) for w in widths)
        self.outputs: list = []

    def forward(self, x):
        features = [x]
        for layer in self.layers:
            features.append(layer(features, outputs=self.outputs))
        return torch.stack(features).pow(2).sum()


@pytest.mark.parametrize("concat", [False, True], ids=["last", "concatenated"])
def test_a_list_the_caller_extends_is_recomputed_as_it_was(concat):
    # the recomputation used to read the list as grown by then: silently other gradients
    # (features[-1]) or a shape error in backward (DenseNet's concatenation)
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.manual_seed(0)
    plain = _Growing(concat)
    torch.manual_seed(0)
    model = checkpointed(_Growing(concat), "layers.*")
    loss, grads = loss_and_grads(plain, x)
    loss_ckpt, grads_ckpt = loss_and_grads(model, x)
    assert torch.equal(loss, loss_ckpt)
    assert_same_grads(grads, grads_ckpt, exact=True)
    # what a layer appends to a list it was handed reaches the caller once, as without
    # checkpointing (the recomputation appends to its copy)
    assert len(model.outputs) == len(plain.outputs) == 3


def _kept_after_forward(save):
    """Operators whose outputs, made inside the blocks, are still alive after forward."""
    model = Net().double()
    if save is not None:
        checkpointed(model, "layers.*", save=save)
    tracker = StorageTracker()
    for layer in model.layers:
        layer.register_forward_pre_hook(lambda module, args: setattr(tracker, "tag", "block"))
        layer.register_forward_hook(lambda module, args, out: setattr(tracker, "tag", ""))
    with tracker:
        loss = model(torch.randn(5, 8, dtype=torch.float64)).pow(2).mean()
    kept = Counter(s.op for s in tracker.alive() if s.tag == "block" and s.op != "add")
    loss.backward()
    return kept


def test_what_forward_keeps():
    # Per block (x [5, 8]): LayerNorm output, mean and rstd; fc1 output (for GELU); GELU output
    # (for fc2). The residual add makes the block's output, kept in every case, left out here.
    assert _kept_after_forward(None) == {"native_layer_norm": 6, "addmm": 2, "gelu": 2}
    assert _kept_after_forward(FULL) == {}  # only the blocks' inputs
    assert _kept_after_forward(("addmm",)) == {"addmm": 4}  # fc1 and fc2 outputs, nothing else


def _backward_flops(save):
    model = Net(dim=8, n_blocks=2, out=3).double()
    if save is not None:
        checkpointed(model, "layers.*", save=save)
    loss = model(torch.randn(5, 8, dtype=torch.float64)).pow(2).mean()
    with FlopCounterMode(display=False) as counter:
        loss.backward()
    return counter.get_total_flops()


def test_recompute_flops():
    n, d, out, blocks = 5, 8, 3, 2
    fc = 2 * n * d * 4 * d  # fc1 or fc2: 2 * N * in * out
    forward = blocks * 2 * fc + 2 * n * d * out
    assert _backward_flops(None) == 2 * forward  # grad of inputs and of weights
    # The recomputation stops once the last saved tensor (fc2's input) is back, so fc2 itself
    # is not run again (non-reentrant checkpoint's early stop): only fc1 is recomputed.
    assert _backward_flops(FULL) == 2 * forward + blocks * fc
    assert _backward_flops(("addmm",)) == 2 * forward  # matmuls kept, none recomputed


def test_only_in_training_with_grad(monkeypatch):
    calls = []
    real = checkpoint_module.checkpoint
    monkeypatch.setattr(
        checkpoint_module, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    model = checkpointed(Net().double(), "layers.*")
    x = torch.randn(5, 8, dtype=torch.float64)
    expected = model(x)
    assert len(calls) == 2
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    model.eval()
    assert torch.equal(model(x), expected)
    assert len(calls) == 2


def tiny_resnet():
    torch.manual_seed(0)
    config = ResNetConfig(blocks_per_stage=(1, 2), base_width=4, num_classes=5, image_size=16)
    return ResNet(config).double().train()


@pytest.mark.parametrize("save", [FULL, ("convolution",)], ids=["full", "selective"])
def test_batchnorm_statistics_updated_once(save):
    batch = {
        "pixel_values": torch.randn(4, 3, 16, 16, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 2, 3]),
    }
    plain = tiny_resnet()
    loss, grads = loss_and_grads(plain, batch)
    model = checkpointed(tiny_resnet(), "stages.*.*", save=save)
    loss_ckpt, grads_ckpt = loss_and_grads(model, batch)
    assert torch.equal(loss, loss_ckpt)
    assert_same_grads(grads, grads_ckpt, exact=True)
    buffers = dict(model.named_buffers())
    for name, buffer in plain.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    assert int(buffers["stages.1.1.conv.1.num_batches_tracked"]) == 1


def test_matches_direct_children_only():
    model = checkpointed(tiny_gpt2(), "layers.*")
    assert [n for n, m in model.named_modules() if is_checkpointed(m)] == ["layers.0", "layers.1"]
    model = checkpointed(tiny_gpt2(), "**.mlp")
    assert [n for n, m in model.named_modules() if is_checkpointed(m)] == [
        "layers.0.mlp",
        "layers.1.mlp",
    ]


def test_nested_patterns_warn():
    with pytest.warns(UserWarning, match="recomputed twice"):
        checkpointed(tiny_gpt2(), "layers.0", "layers.0.mlp")


def test_deepcopy_is_checkpointed_on_the_copy():
    model = checkpointed(Net().double(), "layers.*")
    clone = copy.deepcopy(model)
    assert clone.layers[0].forward.__self__ is clone.layers[0]
    clone(torch.randn(5, 8, dtype=torch.float64)).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None for p in clone.parameters())


def test_undo_restores_class_forward():
    model = checkpointed(tiny_gpt2(), "layers.*")
    assert "forward" in model.layers[0].__dict__
    undo_all(model)
    for module in model.modules():
        assert "forward" not in module.__dict__
        assert module.forward.__func__ is type(module).forward


def test_undo_leaves_a_forward_replaced_later_alone():
    model = checkpointed(Net().double(), "layers.*")
    replaced = model.layers[1].forward = lambda x, scale=None: x
    with pytest.raises(MemfitError, match="replaced after memfit checkpointed it"):
        undo_all(model)
    assert model.layers[1].forward is replaced
    assert "forward" not in model.layers[0].__dict__


def test_errors_say_the_fix():
    with pytest.raises(InvalidInputError, match=r"'layer\.\*' matches no module.*layers\.0"):
        checkpointed(tiny_gpt2(), "layer.*")
    with pytest.raises(InvalidInputError, match="find_blocks.*'layers.0', 'layers.1'"):
        checkpointed(tiny_gpt2(), "blocks.*")
    with pytest.raises(InvalidInputError, match="not a registered operator.*addmm"):
        checkpointed(tiny_gpt2(), "layers.*", save=("addmmm",))
    with pytest.raises(InvalidInputError, match="names no module"):
        checkpointed(tiny_gpt2())
    model = checkpointed(tiny_gpt2(), "layers.0")
    with pytest.raises(InvalidInputError, match="already checkpointed"):
        checkpointed(model, "layers.*")
    assert not is_checkpointed(model.layers[1])  # the failed technique changed nothing
