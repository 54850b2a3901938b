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


@pytest.mark.gpu
@pytest.mark.parametrize("where", ["cpu", "cuda"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_measure_puts_the_model_back_where_and_as_it_was(where, precision):
    from tests.helpers import token_batch
    from tests.kept import assert_same, fingerprint

    model = tiny_gpt2().to(where)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {k: v.to(where) for k, v in token_batch().items()}
    model(**batch).loss.backward()
    optimizer.step()
    # buffers on the GPU are not held during a pure-bf16 cast (they would be measured)
    same_buffers = not (where == "cuda" and precision == "bf16")
    before = fingerprint(model, optimizer, buffer_identity=same_buffers)
    measured = memfit.measure(model, batch, precision=precision, warmup=1, steps=1)
    assert measured.peak_allocated > 0
    assert_same(before, fingerprint(model, optimizer, buffer_identity=same_buffers))
    if where == "cpu":
        assert all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.gpu
def test_a_measure_that_runs_out_of_memory_puts_the_model_back():
    from tests.helpers import token_batch
    from tests.kept import assert_same, fingerprint

    model = tiny_gpt2().cuda()
    calls = []

    def fail_on_the_third(module, args, kwargs):
        calls.append(1)
        if len(calls) == 3:  # after two real steps: the weights have been updated
            torch.empty(1 << 50, device="cuda")  # a real CUDA out-of-memory error

    model.register_forward_pre_hook(fail_on_the_third, with_kwargs=True)
    batch = {k: v.cuda() for k, v in token_batch().items()}
    before = fingerprint(model, buffer_identity=False)
    with pytest.raises(torch.OutOfMemoryError):
        memfit.measure(model, batch, precision="bf16", warmup=3, steps=1)
    assert len(calls) == 3
    assert_same(before, fingerprint(model, buffer_identity=False))
