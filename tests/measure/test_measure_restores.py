"""``memfit.measure`` trains the module it is given (moved to the GPU, cast for pure bf16,
stepped by its own optimizer) and puts it back exactly as it was, whether it returned or failed.

Without a GPU the measurement's own code runs on the CPU: the device is the CPU and the readings
of CUDA's counters (``_run``, ``_profile``) are replaced by plain steps, so what is checked is
everything ``measure_step`` does to the model around them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit
import memfit.measure.run as run
from memfit.devices import get_device
from memfit.errors import InvalidInputError
from tests.helpers import tiny_gpt2, token_batch
from tests.kept import assert_same, fingerprint

FAILURES = {
    "returns": None,
    "error": RuntimeError("the user's forward failed"),
    "out-of-memory": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "interrupted": KeyboardInterrupt(),
}


class _Normed(nn.Module):
    """A model with BatchNorm statistics, dropout, a frozen weight and a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.frozen = nn.Linear(8, 8)
        self.frozen.weight.requires_grad_(False)
        self.out = nn.Linear(8, 8, bias=False)
        self.out.weight = self.inp.weight  # tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.inp.weight.dtype)  # pure bf16: the batch in the weights' dtype
        return self.out(self.frozen(self.drop(self.norm(self.inp(x)))))


def _models():
    torch.manual_seed(0)
    return {
        "gpt2": (tiny_gpt2(dropout=0.1).float(), token_batch()),
        "normed": (_Normed(), torch.randn(16, 8)),
    }


@pytest.fixture
def on_the_cpu(monkeypatch):
    """measure_step's code on the CPU; ``changed`` records what the run did to the weights."""
    seen: dict[str, object] = {}

    def steps_then(failure):
        def fake_run(gpu, schedule):
            first = next(gpu.module.parameters())
            before = first.detach().clone()
            for i in range(schedule.warmup + schedule.steps):
                if failure is not None and i == 2:
                    seen["changed"] = not torch.equal(first.detach(), before)
                    raise failure
                gpu.run()
            seen["changed"] = not torch.equal(first.detach(), before)
            seen["dtype"] = first.dtype
            return run._Recorded(None, {}, []), None

        return fake_run

    monkeypatch.setattr(run, "_check_can_measure", lambda warmup, steps: None)
    monkeypatch.setattr(run, "local_device", lambda: get_device("h100"))
    monkeypatch.setattr(run, "_run_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(run, "_profile", lambda *args: "profile")
    return steps_then, seen


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "bf16"])
@pytest.mark.parametrize("which", ["gpt2", "normed"])
def test_measure_puts_the_model_back(on_the_cpu, monkeypatch, which, precision, failure):
    steps_then, seen = on_the_cpu
    monkeypatch.setattr(run, "_run", steps_then(FAILURES[failure]))
    model, batch = _models()[which]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(**batch).loss if which == "gpt2" else model(batch).square().mean()
    loss.backward()
    optimizer.step()  # the user's optimizer has state, and the model has gradients
    # pure bf16 casts: model.to(bfloat16) replaces buffers (PyTorch's way), and the measure
    # does not hold the old ones on the measured device, so they come back as new tensors
    same_buffers = precision != "bf16"
    before = fingerprint(model, optimizer, buffer_identity=same_buffers)
    if failure == "returns":
        assert memfit.measure(model, batch, precision=precision, warmup=1, steps=1) == "profile"
    else:
        with pytest.raises(type(FAILURES[failure])):
            memfit.measure(model, batch, precision=precision, warmup=3, steps=2)
    assert seen["changed"]  # the run did train the module
    if precision == "bf16" and failure == "returns":
        assert seen["dtype"] is torch.bfloat16
    assert_same(before, fingerprint(model, optimizer, buffer_identity=same_buffers))
    optimizer.step()  # the user's optimizer still steps the same parameters


def test_a_bad_argument_changes_nothing(on_the_cpu):
    model, batch = _models()["normed"]
    before = fingerprint(model)
    with pytest.raises(InvalidInputError):
        memfit.measure(model, batch, precision="fp8")
    assert_same(before, fingerprint(model))
