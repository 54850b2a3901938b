"""Malformed Python calls: each raises a MemfitError that names the value, what is allowed and
the fix, within 2 seconds, before any long work (the model is left as it was).

Each case is ``(id, call, fragments)``: ``call(d)`` gets the folder of prepared files
(``files.py``); the message must hold every fragment.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import memfit
from memfit import Checkpoint, ChunkedLoss, FusedOptimizer, MicroBatch
from memfit.guard import OOMGuard
from memfit.plan.plan import Plan
from memfit.units import parse_bytes

from .files import profile


class Tiny(nn.Module):
    """A token model: 8000-id vocabulary, 512 learned positions."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(8000, 16)
        self.pos = nn.Embedding(512, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(2))
        self.head = nn.Linear(16, 8000)

    def forward(self, input_ids: torch.Tensor, labels: Any = None) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(x).float().mean()


def ids(high: int = 8000, seq: int = 16) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, high, (2, seq))}


def est(**kwargs: Any) -> Any:
    return memfit.estimate(Tiny(), ids(), **kwargs)


def pln(**kwargs: Any) -> Any:
    return memfit.plan(Tiny(), ids(), **{"budget": "1GiB", **kwargs})


def app(plan: Any, **kwargs: Any) -> Any:
    model = Tiny()
    return memfit.apply(plan, model, torch.optim.AdamW(model.parameters()), **kwargs)


def twice(_: Path) -> Any:
    model = Tiny()
    memfit.apply([Checkpoint(modules=("blocks.0",))], model)
    return memfit.apply([Checkpoint(modules=("blocks.1",))], model)


def estimate_applied(_: Path) -> Any:
    model = Tiny()
    memfit.apply([Checkpoint(modules=("blocks.0",))], model)
    return memfit.estimate(model, ids(), plan=[MicroBatch(n=2)])


def other_model_plan(_: Path) -> Any:
    plan = Plan(techniques=(MicroBatch(n=2),), model_fingerprint="0123456789abcdef")
    return memfit.apply(plan, Tiny())


def undo_twice(_: Path) -> Any:
    model = Tiny()
    step = memfit.apply([Checkpoint(modules=("blocks.0",))], model)
    step.undo()
    with pytest.warns(UserWarning, match="nothing to undo"):
        memfit.undo(model)
    raise memfit.MemfitError("undone twice: warned, as the call has no effect")


def guard(**options: Any) -> Any:
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return OOMGuard(lambda batch: None, optimizer=opt, model=model, **options)


def read(name: str, kind: Any = Plan) -> Any:
    def call(d: Path) -> Any:
        return kind.from_json((d / name).read_text())

    return call


GOOD = profile().to_dict()


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    # parse_bytes and budgets
    (
        "bytes-bare",
        lambda d: parse_bytes("16", of=2**30, what="budget"),
        ("'16'", "'16GiB'", "0.8"),
    ),
    ("bytes-decimal", lambda d: parse_bytes(1.5, of=2**30, what="budget"), ("1.5", "'1.5GiB'")),
    ("bytes-nan", lambda d: parse_bytes(float("nan"), of=2**30, what="budget"), ("nan", "24GiB")),
    ("bytes-inf", lambda d: parse_bytes(float("inf"), what="budget"), ("inf", "24GiB")),
    ("bytes-neg", lambda d: parse_bytes(-1, what="size"), ("-1", "positive")),
    ("bytes-none", lambda d: parse_bytes(None, what="budget"), ("None", "24GiB")),  # type: ignore[arg-type]
    ("bytes-list", lambda d: parse_bytes([16], what="budget"), ("[16]", "24GiB")),  # type: ignore[arg-type]
    ("bytes-bool", lambda d: parse_bytes(True, what="budget"), ("True", "24GiB")),
    ("bytes-unit", lambda d: parse_bytes("3 parsecs"), ("'3 parsecs'", "24GiB")),
    (
        "bytes-fraction",
        lambda d: parse_bytes("0.5", what="budget"),
        ("'0.5'", "no reference size", "'24GiB'"),
    ),
    ("bytes-hex", lambda d: parse_bytes("0x10GiB"), ("'0x10GiB'", "24GiB")),
    ("bytes-exp", lambda d: parse_bytes("1e9"), ("'1e9'", "24GiB")),
    # estimate
    ("est-model-int", lambda d: memfit.estimate(5, ids()), ("5", "nn.Module", "builder")),
    ("est-zoo", lambda d: memfit.estimate("gtp2"), ("'gtp2'", "Did you mean 'gpt2'")),
    ("est-zoo-type", lambda d: memfit.estimate("gpt2", batch_size="8"), ("'8'", "whole number")),
    ("est-builder-int", lambda d: memfit.estimate(lambda: 5, ids()), ("int", "nn.Module")),
    (
        "est-builder-raises",
        lambda d: memfit.estimate(lambda: 1 / 0, ids()),
        ("ZeroDivisionError", "fake tensors"),
    ),
    ("est-no-batch", lambda d: memfit.estimate(Tiny()), ("no batch", "input spec")),
    (
        "est-batch-spec",
        lambda d: memfit.estimate(Tiny(), "input_ids=int64[2,x]"),
        ("int64[2,x]", "name=dtype"),
    ),
    ("est-optimizer", lambda d: est(optimizer="lion"), ("'lion'", "adamw", "factory")),
    ("est-optimizer-int", lambda d: est(optimizer=3), ("3", "factory")),
    ("est-optimizer-factory", lambda d: est(optimizer=lambda p: 1 / 0), ("ZeroDivisionError",)),
    (
        "est-optimizer-factory-type",
        lambda d: est(optimizer=lambda p: 5),
        ("int", "torch.optim.Optimizer"),
    ),
    ("est-precision", lambda d: est(precision="fp8"), ("'fp8'", "bf16-mixed")),
    ("est-precision-none", lambda d: est(precision=None), ("None", "allowed")),
    ("est-device", lambda d: est(device="h300"), ("'h300'", "memfit devices")),
    ("est-device-int", lambda d: est(device=0), ("0", "'h100-80gb'")),
    (
        "est-loss-fn",
        lambda d: est(loss_fn="mse"),
        ("'mse'", "not callable", "(output, batch) -> loss"),
    ),
    ("est-forward", lambda d: est(forward=3), ("3", "not callable", "(model, batch) -> output")),
    (
        "est-batch-size",
        lambda d: memfit.estimate("gpt2", batch_size=0),
        ("batch_size=0", "at least 1"),
    ),
    (
        "est-batch-size-float",
        lambda d: memfit.estimate("gpt2", batch_size=2.5),
        ("2.5", "whole number"),
    ),
    ("est-seq-len", lambda d: memfit.estimate("gpt2", seq_len=-1), ("seq_len=-1", "at least 1")),
    ("est-seq-len-long", lambda d: memfit.estimate("gpt2", seq_len=5000), ("seq_len=5000", "1024")),
    (
        "est-vocab",
        lambda d: memfit.estimate(Tiny(), ids(50257)),
        ("'input_ids'", "8000 rows", "below 8000"),
    ),
    (
        "est-vocab-spec",
        lambda d: memfit.estimate(Tiny(), "input_ids=int64[2,16]<50257"),
        ("<50257", "'embed'"),
    ),
    (
        "est-vocab-labels",
        lambda d: memfit.estimate(Tiny(), {**ids(), "labels": torch.full((2, 16), 9000)}),
        ("'labels'", "9000"),
    ),
    (
        "est-positions",
        lambda d: memfit.estimate(Tiny(), ids(seq=600)),
        ("600 tokens", "'pos' holds 512", "at most 512"),
    ),
    (
        "est-positions-spec",
        lambda d: memfit.estimate(Tiny(), "input_ids=int64[1,4096]<100"),
        ("4096 tokens", "512"),
    ),
    ("est-plan-str", lambda d: est(plan="checkpoint"), ("'checkpoint'", "Plan", "techniques")),
    ("est-plan-int", lambda d: est(plan=[5]), ("5", "technique")),
    ("est-plan-micro", lambda d: est(plan=[MicroBatch(n=0)]), ("n=0", "MicroBatch")),
    ("est-plan-micro-type", lambda d: est(plan=[MicroBatch(n="2")]), ("'2'", "MicroBatch")),  # type: ignore[arg-type]
    ("est-plan-chunks", lambda d: est(plan=[ChunkedLoss(chunks=0)]), ("chunks=0", "ChunkedLoss")),
    (
        "est-plan-ckpt-int",
        lambda d: est(plan=[Checkpoint(modules=3)]),
        ("modules=3", "('layers.*',)"),
    ),  # type: ignore[arg-type]
    (
        "est-plan-ckpt-list",
        lambda d: est(plan=[Checkpoint(modules=("blocks.0", 1))]),
        ("1", "strings"),
    ),  # type: ignore[arg-type]
    (
        "est-plan-ckpt-none",
        lambda d: est(plan=[Checkpoint(modules=("nosuch.*",))]),
        ("'nosuch.*'", "matches no module"),
    ),
    (
        "est-setting",
        lambda d: memfit.trace.estimate.trace_step(Tiny(), ids(), colour="red"),
        ("['colour']", "settings are"),
    ),
    ("est-applied", estimate_applied, ("already applied", "memfit.undo(model)")),
    # plan
    ("plan-budget-bare", lambda d: pln(budget="16"), ("'16'", "'16GiB'")),
    ("plan-budget-float", lambda d: pln(budget=1.5), ("1.5", "'1.5GiB'")),
    ("plan-budget-nan", lambda d: pln(budget=float("nan")), ("nan", "24GiB")),
    ("plan-budget-none", lambda d: pln(budget=None), ("None", "24GiB")),
    ("plan-budget-int", lambda d: pln(budget=16), ("16", "'16GiB'", "16 B")),
    ("plan-budget-huge", lambda d: pln(budget="1TiB"), ("1.00 TiB", "more than h100-80gb")),
    ("plan-budget-neg", lambda d: pln(budget="-1GiB"), ("'-1GiB'", "positive")),
    ("plan-allow-unknown", lambda d: pln(allow="checkpointing"), ("checkpointing", "chooses from")),
    ("plan-allow-list", lambda d: pln(allow=["checkpoint", "nosuch"]), ("nosuch", "chooses from")),
    ("plan-allow-int", lambda d: pln(allow=5), ("allow=5", "allow='checkpoint'")),
    ("plan-allow-empty", lambda d: pln(allow=""), ("allow=''", "names no technique")),
    (
        "plan-allow-not-planned",
        lambda d: pln(allow="mixed_precision"),
        ("mixed_precision", "chooses from"),
    ),
    ("plan-chunks", lambda d: pln(chunks=1), ("chunks=1", "at least 2")),
    ("plan-micro", lambda d: pln(max_micro_batches=0), ("max_micro_batches=0", "at least 1")),
    ("plan-margin", lambda d: pln(margin=0.7), ("margin=0.7", "[0, 0.5)")),
    ("plan-margin-str", lambda d: pln(margin="2%"), ("'2%'", "margin=0.02")),
    ("plan-traces", lambda d: pln(max_traces=0), ("max_traces=0", "at least 1")),
    ("plan-head", lambda d: pln(head=""), ("head=''", "'lm_head'")),
    ("plan-blocks-int", lambda d: pln(blocks=5), ("blocks=5", "blocks=['layers.*']")),
    ("plan-blocks-list", lambda d: pln(blocks=[3]), ("[3]", "module patterns")),
    ("plan-device", lambda d: pln(device="tpu"), ("'tpu'", "known devices")),
    ("plan-precision", lambda d: pln(precision="int8"), ("'int8'", "allowed")),
    ("plan-optimizer", lambda d: pln(optimizer="adagrad"), ("'adagrad'", "adamw")),
    (
        "plan-vocab",
        lambda d: memfit.plan(Tiny(), ids(9000), budget="1GiB"),
        ("8000 rows", "below 8000"),
    ),
    # apply and undo
    ("apply-plan-int", lambda d: app(5), ("5", "Plan", "techniques")),
    ("apply-plan-item", lambda d: app([5]), ("5", "technique")),
    ("apply-model", lambda d: memfit.apply([], "gpt2"), ("'gpt2'", "nn.Module")),
    ("apply-precision", lambda d: app([], precision="fp4"), ("'fp4'", "allowed")),
    ("apply-micro", lambda d: app([MicroBatch(n=0)]), ("n=0", "MicroBatch")),
    (
        "apply-ckpt-none",
        lambda d: app([Checkpoint(modules=("nosuch",))]),
        ("'nosuch'", "matches no module"),
    ),
    (
        "apply-fused-sgd",
        lambda d: memfit.apply(
            [FusedOptimizer()], Tiny(), torch.optim.SGD(Tiny().parameters(), lr=1)
        ),
        ("SGD", "Adam"),
    ),
    ("apply-twice", twice, ("already applied", "step.undo()", "memfit.undo(model)")),
    ("apply-other-model", other_model_plan, ("another model", "plan")),
    ("apply-head", lambda d: app([ChunkedLoss(chunks=4, head="nosuch")]), ("'nosuch'", "head")),
    ("undo-twice", undo_twice, ("undone twice",)),
    ("undo-int", lambda d: memfit.undo(5), ("5", "nn.Module")),
]


@pytest.mark.parametrize(("call", "must"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_call_says_what_to_do(call, must, files) -> None:
    started = time.perf_counter()
    with pytest.raises(memfit.MemfitError) as caught:
        call(files)
    took = time.perf_counter() - started
    message = str(caught.value)
    for fragment in must:
        assert fragment in message, (fragment, message)
    assert took < 2.0, f"{took:.2f} s"


def test_cases_over_the_cli_and_the_api_number_at_least_150() -> None:
    from .test_api_saved import CASES as SAVED
    from .test_cli import CASES as CLI

    assert len(CASES) + len(SAVED) + len(CLI) >= 150
    assert len({c[0] for c in CASES}) == len(CASES)
