import dataclasses
import json

import pytest

from memfit.errors import InvalidInputError
from memfit.profile import Category, MemoryProfile, ModuleMemory, Phase, TimelineEvent
from memfit.units import GiB


def make() -> MemoryProfile:
    return MemoryProfile(
        source="estimate",
        model="m",
        device="h100-80gb",
        device_memory=80 * GiB,
        precision="fp32",
        optimizer="adamw",
        batch="float32[2]",
        peak_allocated=10 * GiB,
        peak_reserved=12 * GiB,
        by_category={c: 0 for c in Category},
        modules=(ModuleMemory(fqn="", module_type="M", param_bytes=4),),
        timeline=(TimelineEvent(index=0, phase=Phase.BACKWARD, allocated=1, reserved=2),),
        outside_pytorch={"cuda_context": GiB},
    )


def test_round_trip_and_plain_keys():
    profile = make()
    data = json.loads(profile.to_json())
    assert set(data["by_category"]) == {
        "param",
        "buffer",
        "grad",
        "optimizer",
        "activation",
        "temporary",
        "other",
    }
    assert data["timeline"][0]["phase"] == "backward"
    assert MemoryProfile.from_json(profile.to_json()) == profile


def test_fits_uses_usable_memory():
    profile = make()
    assert profile.usable_memory == 79 * GiB
    assert profile.fits()
    assert not profile.fits(11 * GiB)
    assert profile.device_total == 13 * GiB


def test_bad_json():
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        MemoryProfile.from_json("{")
    with pytest.raises(InvalidInputError, match="schema_version"):
        MemoryProfile.from_json("{}")


def test_host_figures_round_trip_and_old_json_still_loads():
    held = {"master weights": 4 * GiB, "optimizer state": 8 * GiB, "gradients": 4 * GiB}
    profile = dataclasses.replace(make(), host_bytes=held)
    assert profile.host_peak == 16 * GiB
    data = json.loads(profile.to_json())
    assert data["host_bytes"] == held
    assert MemoryProfile.from_json(profile.to_json()) == profile
    del data["host_bytes"]  # a profile saved before host memory was predicted
    old = MemoryProfile.from_dict(data)
    assert old.host_bytes == {} and old.host_peak == 0
