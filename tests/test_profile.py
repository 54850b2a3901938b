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
