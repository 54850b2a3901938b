"""Checkpoints while OffloadOptimizer is applied: saved from the host's masters and state, and
loaded into them, so that saving, loading and training on is the plain run's, bit for bit.

Before, ``model.load_state_dict`` changed only the GPU's working copies and the next update
overwrote them from the stale masters; ``optimizer.state_dict()`` had no state for the
offloaded weights. The reference is the plain step with PyTorch's fused CPU AdamW, which the
host runs (as in ``test_offload_optimizer``).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

import memfit
from memfit.errors import InvalidInputError
from memfit.techniques import OffloadOptimizer
from tests.apply.test_offload_optimizer import _assert_state_equal, _batches, _llama, _run

DTYPES = {"bf16-mixed": "bfloat16", "fp32": "float32"}


def _opt(model, lr=1e-2):
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, fused=True)


def _checkpoint(precision):
    """A plain run's model and optimizer state after two steps, with another learning rate."""
    model = _llama()
    optimizer = _opt(model, lr=3e-2)
    _run(model, optimizer, None, _batches(2, size=3), precision)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())


def _saved_and_loaded(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize(
    ("precision", "load"),
    [("bf16-mixed", "both")]
    + [
        pytest.param(p, load, marks=pytest.mark.slow)  # 1-10 s each on two cores
        for p, load in [
            ("fp32", "both"),
            ("bf16-mixed", "model"),
            ("fp32", "model"),
            ("bf16-mixed", "optimizer"),
            ("fp32", "optimizer"),
        ]
    ],
)
def test_loading_while_applied_trains_on_as_the_plain_run(precision, load) -> None:
    model_state, optimizer_state = _checkpoint(precision)
    first, after = _batches(1), _batches(3)[1:]
    plan = [OffloadOptimizer(dtype=DTYPES[precision])]
    runs = {}
    for name, technique in (("plain", None), ("offloaded", plan)):
        model = _llama()
        optimizer = _opt(model)
        step, _ = _run(model, optimizer, technique, first, precision)
        if load in ("both", "model"):
            model.load_state_dict(model_state)
        if load in ("both", "optimizer"):  # a copy each: torch.optim keeps the loaded tensors
            optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        losses = [step(batch) for batch in after]
        runs[name] = (model, optimizer, step, losses)
    plain, offloaded = runs["plain"], runs["offloaded"]
    assert torch.equal(torch.stack(plain[3]), torch.stack(offloaded[3]))
    _assert_same_weights(plain[0], offloaded[0])  # offloaded: the masters, while applied
    _assert_state_equal(plain[1], offloaded[1])
    offloaded[2].undo()
    _assert_same_weights(plain[0], offloaded[0])
    _assert_state_equal(plain[1], offloaded[1])


@pytest.mark.parametrize("precision", list(DTYPES))
def test_a_checkpoint_saved_while_applied_is_the_plain_runs(precision) -> None:
    """Saved while applied (through torch.save), loaded into a plain run: the same training."""
    batches = _batches(4)
    plain, offloaded = _llama(), _llama()
    plain_opt, off_opt = _opt(plain), _opt(offloaded)
    plan = [OffloadOptimizer(dtype=DTYPES[precision])]
    plain_step, _ = _run(plain, plain_opt, None, batches[:2], precision)
    off_step, _ = _run(offloaded, off_opt, plan, batches[:2], precision)
    model_state = _saved_and_loaded(offloaded.state_dict())
    optimizer_state = _saved_and_loaded(off_opt.state_dict())
    assert {v.dtype for v in model_state.values()} == {torch.float32}
    _assert_state_equal(plain_opt, off_opt)
    resumed = _llama()
    resumed_opt = _opt(resumed)
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(optimizer_state)
    resumed_step, _ = _run(resumed, resumed_opt, None, [], precision)
    for batch in batches[2:]:
        assert torch.equal(plain_step(batch), resumed_step(batch))
        off_step(batch)
    _assert_same_weights(plain, resumed)
    _assert_same_weights(plain, offloaded)
    _assert_state_equal(plain_opt, resumed_opt)
    _assert_state_equal(plain_opt, off_opt)


def test_a_fresh_optimizer_checkpoint_resets_the_host_state() -> None:
    """torch.optim drops the state of parameters the checkpoint has none for: so does the host."""
    fresh = _opt(_llama()).state_dict()
    runs = []
    for technique in (None, [OffloadOptimizer()]):
        model = _llama()
        optimizer = _opt(model)
        step, _ = _run(model, optimizer, technique, _batches(2))
        optimizer.load_state_dict(copy.deepcopy(fresh))
        step(_batches(3)[2])
        runs.append((model, optimizer))
    _assert_same_weights(runs[0][0], runs[1][0])
    _assert_state_equal(runs[0][1], runs[1][1])


def test_loading_with_assign_is_refused_with_the_fix() -> None:
    model = _llama()
    memfit.apply(
        [OffloadOptimizer()], model, _opt(model), precision="bf16-mixed", device_type="cpu"
    )
    with pytest.raises(InvalidInputError, match=r"assign=True.*memfit.undo\(model\)"):
        model.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)


def test_an_optimizer_checkpoint_of_another_shape_changes_nothing() -> None:
    model = _llama()
    optimizer = _opt(model)
    step, _ = _run(model, optimizer, [OffloadOptimizer()], _batches(1))
    saved = copy.deepcopy(optimizer.state_dict())
    bad = copy.deepcopy(saved)
    entry = next(iter(step.host_optimizer._entries.values()))
    index = next(i for i, s in bad["state"].items() if s["exp_avg"].shape == entry.shape)
    bad["state"][index]["exp_avg"] = torch.zeros(3)
    with pytest.raises(InvalidInputError, match="exp_avg"):
        optimizer.load_state_dict(bad)
    after = optimizer.state_dict()
    for i, state in saved["state"].items():
        for key, value in state.items():
            assert torch.equal(value, after["state"][i][key]), (i, key)


@pytest.mark.gpu
def test_on_the_gpu_a_loaded_checkpoint_reaches_the_host() -> None:
    """The CUDA path: right after loading, the masters and the host's moments are the
    checkpoint's, bit for bit, and the working copies its bfloat16 rounding; the next steps'
    losses match the plain run's that loaded it (to rounding: the host's CPU kernel)."""
    model_state, optimizer_state = _checkpoint("bf16-mixed")
    batches = [{k: v.cuda() for k, v in b.items()} for b in _batches(3)]
    runs = []
    for technique in (None, [OffloadOptimizer()]):
        model = _llama().cuda()
        optimizer = _opt(model)
        if technique is None:
            step = memfit.TrainStep(model, optimizer, precision="bf16-mixed")
        else:
            step = memfit.apply(technique, model, optimizer, precision="bf16-mixed")
        step(batches[0])
        model.load_state_dict(model_state)
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        runs.append((model, optimizer, step))
    (plain, plain_opt, plain_step), (offloaded, off_opt, off_step) = runs
    masters = off_step.host_optimizer.master_state_dict()
    assert masters
    for name, master in masters.items():
        assert torch.equal(master, model_state[name]), name
        working = offloaded.get_parameter(name).detach()
        assert torch.equal(working.cpu(), model_state[name].to(torch.bfloat16)), name
    moments = {k: (v["exp_avg"], v["exp_avg_sq"]) for k, v in off_opt.state_dict()["state"].items()}
    for key, (avg, avg_sq) in moments.items():
        assert torch.equal(avg.cpu(), optimizer_state["state"][key]["exp_avg"]), key
        assert torch.equal(avg_sq.cpu(), optimizer_state["state"][key]["exp_avg_sq"]), key
    losses = [(plain_step(b), off_step(b)) for b in batches[1:]]
    plain_losses, off_losses = (torch.stack(x) for x in zip(*losses, strict=True))
    torch.testing.assert_close(off_losses, plain_losses, rtol=1e-3, atol=0)
