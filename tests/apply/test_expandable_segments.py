"""ExpandableSegments: the allocator setting turned on where CUDA runs the model, and back."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import memfit
import memfit.apply.expandable_segments as expandable
from memfit.step.context import ApplyContext
from memfit.step.train_step import TrainStep
from memfit.techniques import ExpandableSegments
from memfit.trace.allocator import AllocatorSettings


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 1))


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The allocator's options, as a list this test reads (the last is in force)."""
    options: list[str] = [""]
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    getter = lambda: options[-1]  # noqa: E731
    monkeypatch.setattr(torch._C, "_accelerator_getAllocatorSettings", getter, raising=False)
    monkeypatch.setattr(expandable, "_set_settings", options.append)
    return options


@pytest.fixture
def allocator(settings: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The same, in a process that has CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return settings


def test_apply_turns_it_on_and_undo_turns_it_off(allocator: list[str]) -> None:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters())
    step = memfit.apply([ExpandableSegments()], model, optimizer, precision="fp32")
    assert allocator[-1] == "expandable_segments:True"
    assert expandable.expandable_segments_on()
    step.undo()
    assert allocator[-1] == "expandable_segments:False"
    assert not expandable.expandable_segments_on()


@pytest.mark.parametrize(
    "set_before", ["expandable_segments:True", "a:1, expandable_segments:True"]
)
def test_a_setting_already_on_is_left_alone(allocator: list[str], set_before: str) -> None:
    allocator[:] = [set_before]
    model = _model()
    step = memfit.apply([ExpandableSegments()], model, torch.optim.SGD(model.parameters()))
    step.undo()
    assert allocator == [set_before]  # nothing set, nothing restored


def _mlp() -> nn.Module:
    layers = (nn.Linear(1024, 3000), nn.GELU(), nn.Linear(3000, 1024))
    return nn.Sequential(*[m for _ in range(4) for m in layers])


def test_a_model_on_fake_tensors_is_left_alone(allocator: list[str]) -> None:
    with FakeTensorMode():
        fake = _model()
    context = ApplyContext()
    undo = expandable.apply_expandable_segments(fake, ExpandableSegments(), context)
    undo()
    assert allocator == [""]
    undo = expandable.apply_expandable_segments(_model(), ExpandableSegments(), context)
    assert allocator == ["", "expandable_segments:True"]  # a real one, with CUDA: set
    undo()


def test_the_tracer_simulates_it(settings: list[str]) -> None:
    spec = "float32[1000,1024]"
    planned = memfit.estimate(_mlp, spec, plan=[ExpandableSegments()], device="h200")
    assert settings == [""]
    simulated = memfit.estimate(
        _mlp, spec, device="h200", allocator=AllocatorSettings(expandable_segments=True)
    )
    default = memfit.estimate(_mlp, spec, device="h200")
    assert (planned.peak_reserved, planned.peak_allocated) == (
        simulated.peak_reserved,
        simulated.peak_allocated,
    )
    assert planned.peak_reserved != default.peak_reserved  # the simulation did change
    assert planned.plan == "expandable segments"


def test_the_step_is_the_same() -> None:
    """Only where memory comes from changes: the same gradients and weights, bit for bit."""
    weights = []
    for plan in ([], [ExpandableSegments()]):
        model = _model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        step = memfit.apply(plan, model, optimizer, precision="fp32") if plan else None
        run = step or TrainStep(model, optimizer, precision="fp32")
        generator = torch.Generator().manual_seed(1)
        for _ in range(2):
            run(torch.randn(16, 32, generator=generator))
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


@pytest.mark.gpu
def test_on_the_gpu_the_allocator_grows_in_place_until_undone() -> None:
    if expandable.expandable_segments_on():
        pytest.skip("PYTORCH_CUDA_ALLOC_CONF already has expandable_segments:True")
    # activations of 4 MiB: the large pool, whose new segments are the ones that expand
    batch = torch.randn(16384, 32, device="cuda")
    plain = _model().cuda()
    plain_step = TrainStep(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2), precision="fp32")
    plain_step(batch)
    model = _model().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    step = memfit.apply([ExpandableSegments()], model, optimizer, precision="fp32")
    assert expandable.expandable_segments_on()
    step(batch)
    # the step may fit in segments cached before apply (the plain model's); a new block larger
    # than any of them must come from a new segment, which the setting makes expandable
    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    holding = [s for s in torch.cuda.memory_snapshot() if _holds(s, block.data_ptr())]
    assert holding and holding[0].get("is_expandable"), holding
    # where the memory came from changed, not the step: the same weights bit for bit
    for a, b in zip(plain.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    step.undo()
    assert not expandable.expandable_segments_on()


def _holds(segment: dict, address: int) -> bool:
    return segment["address"] <= address < segment["address"] + segment["total_size"]


@pytest.mark.parametrize("name", ["PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"])
def test_the_environment_counts_until_something_is_set_at_run_time(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setattr(torch._C, "_accelerator_getAllocatorSettings", lambda: "", raising=False)
    for other in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        monkeypatch.delenv(other, raising=False)
    assert not expandable.expandable_segments_on()
    monkeypatch.setenv(name, "max_split_size_mb:64,expandable_segments:True")
    assert expandable.expandable_segments_on()
    set_at_run_time = "expandable_segments:False"
    monkeypatch.setattr(torch._C, "_accelerator_getAllocatorSettings", lambda: set_at_run_time)
    assert not expandable.expandable_segments_on()
