"""The offload cost model: the step takes as long as the busiest of GPU, host and PCIe."""

from __future__ import annotations

import pytest

from memfit.devices import get_device, host_spec
from memfit.offload_cost import offloaded_step_time

H200 = get_device("h200")  # 55 GB/s each way
HOST = host_spec("128GiB", cores=16, adam_params_s=4e9)


def _time(**overrides):
    settings = dict(
        gpu_s=1.0, forward_s=0.25, backward_s=0.75, offloaded_params=2_000_000_000,
        first_share=0.05, activation_bytes=0, micro_batches=1, device=H200, host=HOST,
        contention=1.0,
    )  # fmt: skip
    settings.update(overrides)
    return offloaded_step_time(**settings)


def test_a_gpu_bound_step_pays_the_first_block_chain_only() -> None:
    timing = _time()
    update_s, copies_s = 2e9 / 4e9, 8 * 2e9 / 55e9  # 0.5 s; 16 GB out and in: 0.29 s
    assert timing.bound == "gpu"
    assert timing.step_s == pytest.approx(1.0 + 0.05 * (update_s + copies_s))
    assert timing.host_s == pytest.approx(update_s + 0.05 * 1.0 + 0.05 * (update_s + copies_s))


def test_a_slow_host_sets_the_step() -> None:
    slow = host_spec("128GiB", cores=4, adam_params_s=1e9)
    timing = _time(host=slow)
    assert timing.bound == "host"
    assert timing.step_s == pytest.approx(2.0 + 0.05 * 1.0 + 0.05 * (2.0 + 16e9 / 55e9))


def test_micro_batches_add_host_accumulation_and_copies() -> None:
    one, four = _time(), _time(micro_batches=4)
    accumulate_s = 3 * 2e9 * 12 / (28 * 4e9)  # 12 of the update's 28 bytes, 3 more times
    waits_less_s = 0.05 * (1.0 - 1.0 / 4)  # the last block's share of one micro-batch
    assert four.host_s - one.host_s == pytest.approx(accumulate_s - waits_less_s)
    assert four.pcie_s == pytest.approx(4 * 8e9 / 55e9)


def test_activations_alone_can_be_pcie_bound() -> None:
    timing = _time(offloaded_params=0, activation_bytes=80 * 10**9)
    assert timing.bound == "pcie"
    assert timing.step_s == pytest.approx(80e9 / 55e9)
    assert timing.host_s == 0.0


def test_contention_slows_the_host_step() -> None:
    assert _time(contention=2.0).host_s > _time().host_s
