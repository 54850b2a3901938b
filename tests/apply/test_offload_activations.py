"""OffloadActivations: checkpoint boundaries in host memory, bit-identical gradients.

On a CPU the saved tensors are copied byte for byte into host buffers and back, through the
same hooks, grouping and prefetching as on a GPU (only the side stream is missing), in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.host_activations import _LAG
from memfit.step.undo import applied
from memfit.techniques import Checkpoint, OffloadActivations
from tests.helpers import VOCAB, price_host, tiny_llama

LAYERS = ("layers.*",)


def _batch(size: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (size, seq), generator=torch.Generator().manual_seed(3))
    return {"input_ids": ids, "labels": ids.clone()}


def _grads(model: nn.Module, plan: list, batch: dict) -> tuple[torch.Tensor, dict]:
    step = memfit.apply(plan, model, None, precision="fp32", device_type="cpu")
    loss = step(batch)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return loss, grads


@pytest.mark.parametrize(
    "plan",
    [
        [Checkpoint(modules=LAYERS), OffloadActivations(modules=LAYERS, min_bytes=0)],
        [OffloadActivations(modules=LAYERS, min_bytes=0)],  # everything the blocks save
        [Checkpoint(modules=LAYERS), OffloadActivations(modules=LAYERS, min_bytes=0, ahead=0)],
    ],
    ids=["checkpointed", "not-checkpointed", "no-prefetch"],
)
def test_gradients_are_bit_identical(plan) -> None:
    batch = _batch()
    loss, expected = _grads(tiny_llama(), [], batch)
    model = tiny_llama()
    offloaded_loss, got = _grads(model, plan, batch)
    assert torch.equal(loss, offloaded_loss)
    assert all(torch.equal(expected[n], got[n]) for n in expected)
    memfit.apply.undo_all(model)
    assert not applied(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


class _TwoShapes(nn.Module):
    """Saves one storage under two shapes: 3-D for the product with ``scale``, 2-D for ``mm``
    (on PyTorch 2.6 a LLaMA block's backward got the 2-D shape for a batched product)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(width)
        self.scale = nn.Parameter(torch.randn(width, generator=generator))
        self.proj = nn.Parameter(torch.randn(width, width, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.sin()
        return h * self.scale + (h.reshape(-1, h.shape[-1]) @ self.proj).view_as(h)


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_TwoShapes(8) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_a_storage_saved_under_two_shapes_comes_back_under_each() -> None:
    batch = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = []
    for plan in ([], [OffloadActivations(modules=LAYERS, min_bytes=0)]):
        model = _Stack().double()
        memfit.apply(plan, model, None, precision="fp32", device_type="cpu")(batch)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_undo_restores_the_checkpointed_forward() -> None:
    model = tiny_llama()
    plan = [Checkpoint(modules=LAYERS), OffloadActivations(modules=LAYERS)]
    memfit.apply(plan, model, None, device_type="cpu")
    wrapped = model.layers[0].__dict__["forward"]
    assert getattr(wrapped.__func__, "offloader", None) is not None  # outside the checkpoint
    memfit.apply.undo_all(model)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_checkpoint_listed_after_it_is_refused_at_the_first_step() -> None:
    model = tiny_llama()
    plan = [OffloadActivations(modules=LAYERS), Checkpoint(modules=LAYERS)]
    step = memfit.apply(plan, model, None, precision="fp32", device_type="cpu")
    with pytest.raises(UnsupportedModelError, match="after the Checkpoint"):
        step(_batch())
    memfit.apply.undo_all(model)


@pytest.mark.parametrize(
    ("technique", "message"),
    [
        (OffloadActivations(modules=()), "names no module"),
        (OffloadActivations(modules=("nope.*",)), "matches no module"),
        (OffloadActivations(modules=LAYERS, ahead=-1), "ahead=-1"),
        (OffloadActivations(modules=LAYERS, min_bytes=1.5), "min_bytes=1.5"),  # type: ignore[arg-type]
    ],
)
def test_bad_settings_are_refused(technique, message) -> None:
    model = tiny_llama()
    with pytest.raises(InvalidInputError, match=message):
        memfit.apply([technique], model, None, device_type="cpu")
    assert not applied(model)


def _llama():
    from memfit.zoo.llama import Llama, LlamaConfig

    return Llama(
        LlamaConfig(
            n_layers=4,
            dim=256,
            n_heads=4,
            n_kv_heads=2,
            hidden_dim=512,
            vocab_size=VOCAB,
            max_seq_len=512,
        )  # fmt: skip
    )


def test_predicted_host_bytes_are_the_boundaries_and_the_peak_drops() -> None:
    """Each checkpointed block keeps its input, [B, S, D] float32 (the residual stream), which
    moves to the host."""
    batch, size, seq, dim = "input_ids=int64[4,512]<97 labels=int64[4,512]<97", 4, 512, 256
    checkpointed = [Checkpoint(modules=LAYERS)]
    offloaded = checkpointed + [OffloadActivations(modules=LAYERS)]
    kept = memfit.estimate(_llama, batch, plan=checkpointed, precision="fp32", optimizer=None)
    moved = memfit.estimate(_llama, batch, plan=offloaded, precision="fp32", optimizer=None)
    boundary = size * seq * dim * 4
    assert dict(moved.host_bytes) == {"offloaded activations": 4 * boundary}
    assert kept.host_bytes == {}

    def forward_peak(profile):
        return max(e.allocated for e in profile.timeline if e.phase.value == "forward")

    # all but the last _LAG: their copies may still be queued when forward ends (the step
    # bounds how many; the prediction holds as many on the device)
    assert forward_peak(kept) - forward_peak(moved) >= (4 - _LAG) * boundary


def test_each_moved_tensor_is_priced_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Calibration.offload_tensor_s`` per boundary moved: a price of a whole second a tensor
    makes the step the CPU's, so the four boundaries add four seconds to the predicted step."""
    batch = "input_ids=int64[4,512]<97 labels=int64[4,512]<97"
    plan = [Checkpoint(modules=LAYERS), OffloadActivations(modules=LAYERS)]
    times = {}
    for price in (0.0, 1.0):
        price_host(monkeypatch, offload_tensor_s=price)
        times[price] = memfit.estimate(
            _llama, batch, plan=plan, precision="fp32", optimizer=None
        ).step_time_s
    assert times[1.0] - times[0.0] == pytest.approx(4.0, abs=0.05)


@pytest.mark.gpu
def test_on_the_gpu_gradients_are_bit_identical() -> None:
    """The CUDA path: pinned buffers, the side stream, prefetching two blocks ahead."""
    batch = {k: v.cuda() for k, v in _batch(4, 64).items()}
    plain, offloaded = tiny_llama().float().cuda(), tiny_llama().float().cuda()
    checkpointed = [Checkpoint(modules=LAYERS)]
    steps = [
        memfit.apply(checkpointed, plain, None, precision="bf16-mixed"),
        memfit.apply(
            checkpointed + [OffloadActivations(modules=LAYERS, min_bytes=0)],
            offloaded,
            None,
            precision="bf16-mixed",
        ),
    ]
    losses = [step(batch) for step in steps]
    assert torch.equal(losses[0], losses[1])
    for a, b in zip(plain.parameters(), offloaded.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)
