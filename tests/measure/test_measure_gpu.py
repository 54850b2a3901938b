"""memfit.measure on a real GPU, against memfit.estimate of the same step (run on the device)."""

from __future__ import annotations

import pytest
import torch

import memfit
from memfit.errors import DeviceError
from tests.models import TINY_GPT2_INPUT, tiny_gpt2


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_measure_matches_estimate_on_a_small_model(precision):
    measured = memfit.measure(tiny_gpt2, TINY_GPT2_INPUT, precision=precision)
    predicted = memfit.estimate(tiny_gpt2, TINY_GPT2_INPUT, precision=precision, device="cuda")
    assert measured.source == "measure"
    assert sum(measured.by_category.values()) == measured.peak_allocated
    assert abs(predicted.peak_allocated / measured.peak_allocated - 1) < 0.03
    assert abs(predicted.peak_reserved / measured.peak_reserved - 1) < 0.10
    names = {m.fqn for m in measured.modules}
    assert names == {m.fqn for m in predicted.modules}
    # the real stack it ran on, against the one the estimate modelled
    assert measured.versions["torch"] == torch.__version__
    assert measured.versions["cudnn"].startswith(measured.target_stack["cudnn"])
    cudnn = torch.backends.cudnn.version()
    assert measured.target_stack["cudnn"] == f"{cudnn // 10000}.{cudnn // 100 % 100}"
    assert predicted.target_stack == {"torch": "2.11", "cudnn": "9.19"}


@pytest.mark.gpu
def test_measure_writes_a_snapshot(tmp_path):
    path = tmp_path / "snapshot.pickle"
    memfit.measure(tiny_gpt2, TINY_GPT2_INPUT, precision="fp32", snapshot=str(path))
    assert path.stat().st_size > 0


def test_measure_without_a_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DeviceError, match="memfit.estimate"):
        memfit.measure(tiny_gpt2, TINY_GPT2_INPUT)
