import pytest

from memfit.devices import DEVICES, REFERENCE_CORES, get_device, host_spec, local_host
from memfit.errors import DeviceError, InvalidInputError
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


def test_pcie_rates_by_generation():
    assert get_device("h200").pcie_bytes_s == 55e9  # measured, PCIe 5.0 x16
    assert get_device("rtx4090").pcie_bytes_s == 27.5e9  # PCIe 4.0: half
    assert get_device("t4").pcie_bytes_s == 13.75e9  # PCIe 3.0: a quarter


def test_host_spec_given_and_defaults():
    here = local_host()
    assert here.memory_bytes > 0 and here.cores >= 1 and here.name == "local"
    given = host_spec("128GiB")
    assert given.memory_bytes == 128 * 2**30 and given.name == "given"
    assert given.cores == here.cores  # a local GPU: this machine's cores
    remote = host_spec("64GiB", local=False)
    assert remote.cores == REFERENCE_CORES
    assert remote.adam_params_s == pytest.approx(min(3.85e9, 0.34e9 * (REFERENCE_CORES - 2)))
    assert host_spec(cores=4).adam_params_s == pytest.approx(0.34e9 * 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": "lots"}, "not a size"),
        ({"memory": "-1GiB"}, "must be positive"),
        ({"cores": 0}, "cores=0"),
        ({"adam_params_s": -1.0}, "adam_params_s"),
    ],
)
def test_host_spec_refuses_bad_values(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        host_spec(**kwargs)
