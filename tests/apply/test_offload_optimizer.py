"""OffloadOptimizer: Adam/AdamW's masters and state on the host, the same training step.

On a CPU the "device" and the host are the same memory, but the step runs the same code as on a
GPU apart from the streams: bfloat16 working copies, gradients handed to the worker thread as
they complete, the CPU kernel's update, the rounded weights copied back before the next
forward. The reference is the plain step with PyTorch's fused CPU AdamW, the kernel the host
runs: the updates must be bit-identical. (float32 masters by design: no float64 variant.)
"""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

import memfit
import memfit.step.host_updates as host_updates
from memfit.errors import InvalidInputError, UnsupportedModelError
from memfit.step.train_step import TrainStep
from memfit.step.undo import applied
from memfit.techniques import MicroBatch, OffloadOptimizer
from tests.helpers import VOCAB


def _llama(tied: bool = False) -> nn.Module:
    from memfit.zoo.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        n_layers=2, dim=32, n_heads=4, n_kv_heads=2, hidden_dim=64, vocab_size=VOCAB,
        max_seq_len=16, tie_embeddings=tied,
    )  # fmt: skip
    return Llama(config).train()


def _hf_llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).train()


def _batches(n: int, size: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (size, 12), generator=generator)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def _optimizer(kind: type, model: nn.Module) -> torch.optim.Optimizer:
    return kind(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)


def _run(model, optimizer, plan, batches, precision="bf16-mixed", micro=1):
    if plan is None:
        step = TrainStep(
            model, optimizer, precision=precision, micro_batches=micro, device_type="cpu"
        )
    else:
        step = memfit.apply(plan, model, optimizer, precision=precision, device_type="cpu")
    losses = [step(batch) for batch in batches]
    return step, losses


def _masters(model: nn.Module, step) -> dict[str, torch.Tensor]:
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    host = step.host_optimizer
    if host is not None:
        weights.update(host.master_state_dict())
    return weights


@pytest.mark.parametrize(
    ("build", "kind", "micro"),
    [
        (_llama, torch.optim.AdamW, 1),
        (lambda: _llama(tied=True), torch.optim.Adam, 1),
        (_llama, torch.optim.AdamW, 2),
        (_hf_llama, torch.optim.AdamW, 1),
    ],
    ids=["llama-adamw", "tied-llama-adam", "llama-micro-batches", "hf-llama-tied"],
)
def test_updates_are_bit_identical_to_fused_adamw(build, kind, micro) -> None:
    reference, offloaded = build(), build()
    batches = _batches(3)
    ref_opt, off_opt = _optimizer(kind, reference), _optimizer(kind, offloaded)
    plan = [OffloadOptimizer()] + ([MicroBatch(n=micro)] if micro > 1 else [])
    ref_step, ref_losses = _run(reference, ref_opt, None, batches, micro=micro)
    off_step, off_losses = _run(offloaded, off_opt, plan, batches)
    host = off_step.host_optimizer
    assert host is not None and host.working_dtype is torch.bfloat16
    assert torch.equal(torch.stack(ref_losses), torch.stack(off_losses))
    expected, got = _masters(reference, ref_step), _masters(offloaded, off_step)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    memfit.apply.undo_all(offloaded)
    after = offloaded.state_dict()
    for name, a in reference.state_dict().items():
        assert a.dtype == after[name].dtype and torch.equal(a, after[name]), name
    _assert_state_equal(ref_opt, off_opt)


def _assert_state_equal(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for key, state in sa["state"].items():
        for name, value in state.items():
            other = sb["state"][key][name]
            assert value.dtype == other.dtype and value.device == other.device, (key, name)
            assert torch.equal(value, other), (key, name)


def test_fp32_precision_keeps_float32_working_weights() -> None:
    reference, offloaded = _llama(), _llama()
    batches = _batches(2)
    ref_opt = _optimizer(torch.optim.AdamW, reference)
    off_opt = _optimizer(torch.optim.AdamW, offloaded)
    ref_step, _ = _run(reference, ref_opt, None, batches, precision="fp32")
    off_step, _ = _run(offloaded, off_opt, [OffloadOptimizer(dtype="float32")], batches, "fp32")
    expected, got = _masters(reference, ref_step), _masters(offloaded, off_step)
    assert all(torch.equal(expected[n], got[n]) for n in expected)


def test_undo_restores_model_and_optimizer_exactly() -> None:
    model = _llama()
    optimizer = _optimizer(torch.optim.AdamW, model)
    _run(model, optimizer, None, _batches(1), precision="bf16-mixed")  # state exists before
    params = list(model.parameters())
    before_model = copy.deepcopy(model.state_dict())
    before_opt = copy.deepcopy(optimizer.state_dict())
    step = memfit.apply([OffloadOptimizer()], model, optimizer, precision="bf16-mixed",
                        device_type="cpu")  # fmt: skip
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16, torch.float32}
    assert all(optimizer.state.get(p) is None for p in step.host_optimizer._entries)
    memfit.apply.undo_all(model)
    assert not applied(model)
    assert list(model.parameters()) == params  # the same objects
    after = model.state_dict()
    assert all(torch.equal(before_model[k], after[k]) for k in before_model)
    after_opt = optimizer.state_dict()
    for key, state in before_opt["state"].items():
        for name, value in state.items():
            assert torch.equal(value, after_opt["state"][key][name]), (key, name)


def test_host_bytes_are_exact() -> None:
    model = _llama()
    optimizer = _optimizer(torch.optim.AdamW, model)
    step = memfit.apply([OffloadOptimizer()], model, optimizer, precision="bf16-mixed",
                        device_type="cpu")  # fmt: skip
    host = step.host_optimizer
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    expected = {"master weights": 4 * linear, "optimizer state": 8 * linear}
    expected["gradients"] = 4 * linear
    assert host.host_bytes() == expected
    assert sum(t.numel() * t.element_size() for t in host._flat.values()) == sum(expected.values())
    predicted = memfit.estimate(
        _llama, _batches(1)[0], plan=[OffloadOptimizer()], precision="bf16-mixed"
    )
    assert dict(predicted.host_bytes) == expected
    assert predicted.host_peak == sum(expected.values())
    memfit.apply.undo_all(model)


@pytest.mark.parametrize(
    ("make_optimizer", "technique", "precision", "message"),
    [
        (
            lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
            OffloadOptimizer(),
            "bf16-mixed",
            "SGD",
        ),
        (
            lambda m: torch.optim.AdamW(m.parameters(), amsgrad=True),
            OffloadOptimizer(),
            "bf16-mixed",
            "amsgrad",
        ),
        (lambda m: torch.optim.AdamW(m.parameters()), OffloadOptimizer(), "fp32", "dtype"),
        (lambda m: torch.optim.AdamW(m.parameters()), OffloadOptimizer(), "fp16-mixed", "fp16"),
        (
            lambda m: torch.optim.AdamW(m.parameters()),
            OffloadOptimizer(dtype="float16"),
            "bf16-mixed",
            "working dtype",
        ),
        (
            lambda m: torch.optim.AdamW(m.parameters()),
            OffloadOptimizer(modules=("nothing.*",)),
            "bf16-mixed",
            "no trained",
        ),
        (
            lambda m: torch.optim.AdamW(m.parameters()),
            OffloadOptimizer(threads=0),
            "bf16-mixed",
            "at least 1",
        ),
    ],  # fmt: skip
)
def test_bad_settings_raise_and_change_nothing(make_optimizer, technique, precision, message):
    model = _llama()
    optimizer = make_optimizer(model)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(InvalidInputError, match=message):
        memfit.apply([technique], model, optimizer, precision=precision, device_type="cpu")
    assert not applied(model)
    after = model.state_dict()
    for key, value in after.items():
        assert before[key].dtype == value.dtype and torch.equal(before[key], value), key


def test_twice_in_a_plan_is_refused() -> None:
    model = _llama()
    with pytest.raises(InvalidInputError, match="twice"):
        memfit.apply([OffloadOptimizer(), OffloadOptimizer()], model,
                     torch.optim.AdamW(model.parameters()), precision="bf16-mixed")  # fmt: skip
    assert not applied(model)


class _Borrower(nn.Module):
    """Uses another module's weight outside that module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.a(x), self.b.weight).sum()


def test_a_weight_used_outside_its_module_is_detected() -> None:
    model = _Borrower()
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    step = memfit.apply([OffloadOptimizer()], model, optimizer, precision="bf16-mixed",
                        device_type="cpu")  # fmt: skip
    x = torch.randn(4, 8)
    step(x)
    with pytest.raises(UnsupportedModelError, match="b.weight"):
        step(x)
    memfit.apply.undo_all(model)


@pytest.mark.gpu
def test_on_the_gpu_the_update_matches_fused_adamw_to_rounding() -> None:
    """The CUDA path (side streams, pinned staging). One step from the same weights: the same
    gradients, so the masters equal the GPU's fused AdamW to float32 rounding (the CPU kernel
    rounds differently: a few ulps of the update). Later steps diverge chaotically, not in
    their math: a one-ulp difference of a master can flip the bf16 working copy's rounding,
    and Adam's normalized step turns a changed tiny gradient into a full step of its own; the
    losses of three steps still agree."""
    reference, offloaded = _llama().cuda(), _llama().cuda()
    batches = [{k: v.cuda() for k, v in b.items()} for b in _batches(3)]
    ref_opt = _optimizer(torch.optim.AdamW, reference)
    off_opt = _optimizer(torch.optim.AdamW, offloaded)
    ref_step = TrainStep(reference, ref_opt, precision="bf16-mixed")
    off_step = memfit.apply([OffloadOptimizer()], offloaded, off_opt, precision="bf16-mixed")
    losses = [(ref_step(batches[0]), off_step(batches[0]))]
    got = off_step.host_optimizer.master_state_dict()
    compared = 0
    for name, param in reference.named_parameters():
        if name in got:
            compared += 1
            before = _llama().get_parameter(name).detach()
            step = float((param.detach().cpu() - before).abs().max())
            # within 1e-4 of the update (lr 1e-2): rounding (~1e-8 here), not other math (the
            # weight decay alone moves a weight by lr * 0.1 * w, ~2e-5)
            torch.testing.assert_close(got[name], param.detach().cpu(), rtol=0, atol=1e-4 * step)
    assert compared > 0
    losses += [(ref_step(b), off_step(b)) for b in batches[1:]]
    ref_losses, off_losses = (torch.stack(x) for x in zip(*losses, strict=True))
    torch.testing.assert_close(off_losses, ref_losses, rtol=1e-3, atol=0)
    memfit.apply.undo_all(offloaded)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in offloaded.parameters())


def test_predicted_device_state_is_exact() -> None:
    """On the GPU: bf16 working copies of the Linear weights, the others in float32 with their
    AdamW moments (each allocation rounded to the allocator's 512-byte blocks)."""

    def block(nbytes: int) -> int:
        return -(-nbytes // 512) * 512

    model = _llama()
    linear = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    resident = [p for p in model.parameters() if all(p is not w for w in linear)]
    batch = "input_ids=int64[2,12]<97 labels=int64[2,12]<97"
    profile = memfit.estimate(
        _llama, batch, plan=[OffloadOptimizer()], precision="bf16-mixed", optimizer="adamw"
    )
    params = sum(block(2 * w.numel()) for w in linear) + sum(block(4 * p.numel()) for p in resident)
    state = sum(2 * block(4 * p.numel()) for p in resident)  # step counters live on the host
    assert profile.by_category[memfit.Category.PARAM] == params
    assert profile.by_category[memfit.Category.OPTIMIZER] == state


def test_the_guard_refuses_a_step_with_the_optimizer_on_the_host() -> None:
    model = _llama()
    step = memfit.apply([OffloadOptimizer()], model, _optimizer(torch.optim.AdamW, model),
                        precision="bf16-mixed", device_type="cpu")  # fmt: skip
    with pytest.raises(InvalidInputError, match="OOMGuard cannot guard"):
        memfit.OOMGuard(step)
    memfit.apply.undo_all(model)


def _slow_host_step(monkeypatch) -> None:
    """The host's update takes 50 ms a weight: the step returns long before the last one."""
    slow = host_updates.host_adam_step

    def slowed(*args, **kwargs):
        time.sleep(0.05)
        return slow(*args, **kwargs)

    monkeypatch.setattr(host_updates, "host_adam_step", slowed)


@pytest.mark.slow  # the host step is slowed to 50 ms a weight
@pytest.mark.parametrize("read", ["model", "module", "optimizer_then_model", "synchronize"])
def test_reads_right_after_the_step_see_the_updated_weights(monkeypatch, read) -> None:
    """A checkpoint saved (or weights read) as soon as ``step`` returns holds the update,
    though the host worker was still running it when the step returned."""
    _slow_host_step(monkeypatch)
    reference, offloaded = _llama(), _llama()
    batches = _batches(1)
    _run(reference, _optimizer(torch.optim.AdamW, reference), None, batches, "fp32")
    optimizer = _optimizer(torch.optim.AdamW, offloaded)
    step, _ = _run(offloaded, optimizer, [OffloadOptimizer(dtype="float32")], batches, "fp32")
    if read == "model":
        got = offloaded.state_dict()
    elif read == "module":
        got = {f"layers.1.{k}": v for k, v in offloaded.layers[1].state_dict().items()}
    elif read == "optimizer_then_model":
        optimizer.state_dict()
        got = {n: p.detach().clone() for n, p in offloaded.named_parameters()}
    else:
        step.synchronize()
        got = {n: p.detach().clone() for n, p in offloaded.named_parameters()}
    expected = reference.state_dict()
    assert got and all(torch.equal(expected[name], value) for name, value in got.items())
    step.undo()
