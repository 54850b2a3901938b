"""The allocator options of the environment, simulated as PyTorch reads them."""

from __future__ import annotations

import pytest
from torch import nn

import memfit
from memfit.trace.alloc_conf import allocator_from_environment, parse_alloc_conf
from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings


@pytest.mark.parametrize(
    "text, settings",
    [
        ("expandable_segments:True", AllocatorSettings(expandable_segments=True)),
        (" expandable_segments : False ", DEFAULT_SETTINGS),
        ("max_split_size_mb:128,expandable_segments:True", AllocatorSettings(True, 128)),
        ("roundup_power2_divisions:4", AllocatorSettings(roundup_power2_divisions=4)),
    ],
)
def test_the_options_it_simulates(text: str, settings: AllocatorSettings) -> None:
    assert parse_alloc_conf(text) == (settings, ())


@pytest.mark.parametrize(
    "text, named",
    [
        ("backend:cudaMallocAsync", "backend:cudaMallocAsync"),
        ("roundup_power2_divisions:[256:1,512:2],max_split_size_mb:64", "[256:1,512:2]"),
        ("garbage_collection_threshold:0.6,expandable_segments:True", "garbage_collection"),
        ("expandable_segments:yes", "expandable_segments:yes"),
    ],
)
def test_what_it_does_not_simulate_is_named(text: str, named: str) -> None:
    settings, warnings = parse_alloc_conf(text, "PYTORCH_ALLOC_CONF")
    assert len(warnings) == 1 and named in warnings[0] and "not simulated" in warnings[0]
    assert warnings[0].startswith("PYTORCH_ALLOC_CONF=")
    if "max_split_size_mb:64" in text:  # what it does read is still read
        assert settings.max_split_size_mb == 64


def test_the_newer_name_goes_first() -> None:
    environ = {"PYTORCH_ALLOC_CONF": "max_split_size_mb:64", "PYTORCH_CUDA_ALLOC_CONF": "x"}
    assert allocator_from_environment(environ) == (AllocatorSettings(max_split_size_mb=64), ())
    assert allocator_from_environment({}) == (DEFAULT_SETTINGS, ())


def _mlp() -> nn.Module:
    layers = (nn.Linear(1024, 3000), nn.GELU(), nn.Linear(3000, 1024))
    return nn.Sequential(*[m for _ in range(4) for m in layers])


def test_an_estimate_simulates_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = "float32[1000,1024]"
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True,backend:native")
    from_environment = memfit.estimate(_mlp, spec, device="h200")
    given = memfit.estimate(
        _mlp, spec, device="h200", allocator=AllocatorSettings(expandable_segments=True)
    )
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF")
    default = memfit.estimate(_mlp, spec, device="h200")
    assert from_environment.peak_reserved == given.peak_reserved != default.peak_reserved
    assert any("backend:native not simulated" in w for w in from_environment.warnings)
    assert not any("not simulated" in w for w in given.warnings + default.warnings)
