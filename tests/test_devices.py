import pytest

from memfit.devices import DEVICES, get_device
from memfit.errors import DeviceError
from memfit.units import GiB

REQUIRED = [
    "h100-80gb",
    "h200",
    "a100-80gb",
    "a100-40gb",
    "l40s",
    "l4",
    "rtx4090",
    "rtx3090",
    "t4",
    "v100-32gb",
]


def test_the_issue_lists_are_all_known():
    assert set(REQUIRED) <= set(DEVICES)


def test_figures_are_sane():
    for spec in DEVICES.values():
        assert 10 * GiB < spec.memory_bytes < 200 * GiB
        assert spec.bandwidth_bytes_s > 1e11
        assert spec.fp32_flops > 1e12
        assert (7, 0) <= spec.sm <= (9, 0)
    assert get_device("h100-80gb").sm == (9, 0)
    assert not get_device("t4").supports_bf16


def test_aliases_and_case():
    assert get_device("H100").name == "h100-80gb"
    assert get_device("RTX 4090").name == "rtx4090"


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(DeviceError, match="h200.*memfit devices"):
        get_device("b300")
