"""The step-time model: operator classes and their work, device and host time, the timeline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import memfit
from memfit.apply.cross_entropy_kernel import cross_entropy_grad_
from memfit.cost import Calibration, op_time, overlapped_seconds
from memfit.cost.classes import op_work
from memfit.cost.device import device_seconds, wave_efficiency
from memfit.devices import get_device
from memfit.step.overhead import collecting, note, scope, take
from memfit.techniques import Checkpoint
from memfit.trace.estimate import trace_step

H200 = get_device("h200")


class Works(TorchDispatchMode):
    """Every operator's work, as the tracer prices it."""

    def __init__(self):
        super().__init__()
        self.works = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.works.append(op_work(func, args, kwargs or {}, out))
        return out


def works_of(fn):
    with FakeTensorMode(), Works() as seen:
        fn()
    return {w.op: w for w in seen.works}


def test_each_class_moves_what_its_kernels_move():
    vocab, dim, tokens = 1000, 64, 32

    def step():
        table = torch.empty(vocab, dim)
        ids = torch.zeros(tokens, dtype=torch.int64)
        rows = F.embedding(ids, table)  # [32, 64] picked out of [1000, 64]
        logits = rows @ table.t()  # mm [32, 64] x [64, 1000]
        torch.nn.functional.nll_loss(logits, ids)
        torch.zeros(vocab, dim)
        rows.view(-1)
        torch.empty(5)

    works = works_of(step)
    embedding = works["embedding"]
    assert embedding.kind == "gather"
    assert embedding.bytes == 2 * tokens * dim * 4 + tokens * 8  # not the 256 kB table
    mm = works["mm"]
    assert mm.kind == "matmul" and mm.flops == 2 * tokens * dim * vocab
    assert mm.shape == (1, tokens, vocab, dim)
    nll = works["nll_loss_forward"]
    assert nll.kind == "gather" and nll.bytes < tokens * vocab * 4 // 10
    assert works["zeros"].kind == "fill" and works["zeros"].bytes == vocab * dim * 4
    assert works["view"].kind == "none" and works["view"].kernels == 0
    assert works["empty.memory_format"].kind == "none"


def test_memfit_cross_entropy_reads_its_logits_twice_and_writes_them_once():
    rows, vocab = 8, 1000

    def chunk():
        logits = torch.empty(rows, vocab, dtype=torch.bfloat16)
        targets = torch.zeros(rows, dtype=torch.int64)
        cross_entropy_grad_(logits, targets, torch.ones(rows), 0.0, 0.0)

    work = works_of(chunk)["cross_entropy_grad_"]
    logits, small = rows * vocab * 2, rows * (8 + 4 + 4)  # targets, scale, losses
    assert work.kind == "custom" and work.bytes == 3 * logits + small


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((1, 8192, 8192, 8192), 2048 / (16 * 132)),  # 2048 tiles: 16 waves, the last one short
        ((1, 128, 256, 64), 1 / 132),  # one tile, K too short to split
        ((1, 128, 256, 8192), 8 / 132),  # one tile, K split in 8
        ((4, 256, 512, 512), 16 / 132),
    ],
)
def test_wave_quantization_of_products(shape, expected):
    assert wave_efficiency(shape, H200, 128 * 256) == pytest.approx(expected)


def test_device_time_is_the_roofline_of_the_class_plus_a_kernel():
    calibration = Calibration()
    mm = op_work_of_mm(8192)
    rate = (
        H200.bf16_flops
        * calibration.matmul_efficiency
        * wave_efficiency(mm.shape, H200, calibration.matmul_tile)
    )
    assert device_seconds(mm, H200, calibration) == pytest.approx(
        mm.flops / rate + calibration.kernel_s
    )
    tiny = op_work_of_mm(16)  # nothing to it but the kernel
    assert (
        calibration.kernel_s < device_seconds(tiny, H200, calibration) < 1.01 * calibration.kernel_s
    )


def op_work_of_mm(n):
    return works_of(
        lambda: torch.empty(n, n, dtype=torch.bfloat16) @ torch.empty(n, n, dtype=torch.bfloat16)
    )["mm"]


def test_the_timeline_is_host_bound_or_device_bound():
    many_small = [(10e-6, 2e-6, False)] * 100
    assert overlapped_seconds(many_small) == pytest.approx(100 * 10e-6 + 2e-6)
    few_large = [(10e-6, 1e-3, False)] * 10
    assert overlapped_seconds(few_large) == pytest.approx(10e-6 + 10 * 1e-3)
    # a synchronising operator makes the host wait for the device
    synced = [(10e-6, 1e-3, True), (10e-6, 1e-6, False)]
    assert overlapped_seconds(synced) == pytest.approx(10e-6 + 1e-3 + 10e-6 + 1e-6)


def test_techniques_note_their_python_per_operator():
    take()
    note("selective_op")  # no trace collecting: a real step's note costs nothing more
    assert take() == {}
    with collecting():
        note("selective_op")
        note("selective_op")
        assert take() == {"selective_op": 2}
        assert take() == {}


def test_a_scope_notes_every_operator_run_inside_it():
    take()
    with collecting(), scope("checkpoint_op"):
        assert take() == {"checkpoint_op": 1}
        note("selective_op")
        with scope("checkpoint_op"):  # a region inside a region: its Python twice
            assert take() == {"checkpoint_op": 2, "selective_op": 1}
        assert take() == {"checkpoint_op": 1}
    assert take() == {}


def test_checkpointed_regions_cost_host_time_per_operator_in_forward():
    from tests.plan.helpers import BATCH, build

    full = trace_step(build, BATCH, plan=[Checkpoint(modules=("layers.*",))])
    calibration = Calibration()
    assert calibration.checkpoint_op_s > 0
    forward = [op for op in full.record.ops if op.stage == "forward" and op.kind == "matmul"]
    inside = [op for op in forward if op.module.startswith("layers.")]
    outside = [op for op in forward if not op.module.startswith("layers.")]
    assert inside and outside
    per_op = calibration.host_forward_op_s + calibration.checkpoint_op_s
    assert min(op.host_s for op in inside) == pytest.approx(per_op)
    assert min(op.host_s for op in outside) == calibration.host_forward_op_s


def test_selective_checkpointing_and_recomputation_cost_host_time():
    from tests.plan.helpers import BATCH, build

    full = trace_step(build, BATCH, plan=[Checkpoint(modules=("layers.*",))])
    recomputed = [op for op in full.record.ops if op.recompute]
    assert recomputed and all(op.stage == "backward" for op in recomputed)
    calibration = Calibration()
    kernels = [op for op in recomputed if op.kind not in ("none", "")]
    # issued by Python as forward's operators are, plus checkpointing's own Python per
    # recomputed operator (its saved-tensor hooks); module calls noted on top
    recompute_s = calibration.host_forward_op_s + calibration.recompute_op_s
    assert calibration.recompute_op_s > 0
    assert all(op.host_s >= recompute_s for op in kernels)
    assert min(op.host_s for op in kernels) == pytest.approx(recompute_s)
    # the same operators in forward pay no recomputation (outside the regions: nothing more)
    forward = [op for op in full.record.ops if op.stage == "forward" and op.kind == "matmul"]
    assert forward and min(op.host_s for op in forward) == calibration.host_forward_op_s
    selective = trace_step(
        build, BATCH, plan=[Checkpoint(modules=("layers.*",), save=("mm", "addmm"))]
    )
    # its dispatch mode's Python, per operator of the regions (at least every product it keeps)
    host = [sum(op.host_s for op in t.record.ops) for t in (full, selective)]
    products = [
        op
        for op in selective.record.ops
        if op.stage == "forward" and op.kind == "matmul" and op.module.startswith("layers.")
    ]
    assert products and host[1] - host[0] > calibration.selective_op_s * len(products)


def test_op_time_reports_both_sides():
    with FakeTensorMode():
        a = torch.empty(4096, 4096, dtype=torch.bfloat16)
        out = a @ a
    cost = op_time(torch.ops.aten.mm.default, (a, a), {}, out, H200, Calibration(), "backward")
    assert cost.kind == "matmul" and cost.seconds > cost.host_s == Calibration().host_backward_op_s
    assert memfit.get_device("h200") == H200


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_optimizers_step_counters_are_read_on_the_host(optimizer):
    """torch.optim's for-loop and multi-tensor steps read one CPU step counter per parameter
    (``.item()``): no wait for the GPU, and the step's Python priced once, as for the fused
    step (the issue: foreach AdamW predicted 18 times slower than fused on GPT-2)."""
    from tests.plan.helpers import BATCH, build

    calibration = Calibration()
    traced = {
        name: trace_step(build, BATCH, optimizer=name, device="h200")
        for name in (optimizer, "adamw-fused")
    }
    steady = [op for op in traced[optimizer].record.ops if op.stage == "optimizer1"]
    assert steady and not any(op.synchronises for op in steady)
    per_op = max(calibration.host_optimizer_op_s, calibration.host_forward_op_s)
    host = sum(op.host_s for op in steady)
    assert (
        calibration.optimizer_step_s <= host <= calibration.optimizer_step_s + len(steady) * per_op
    )
    times = [traced[name].profile.step_time_s for name in (optimizer, "adamw-fused")]
    assert times[0] < 1.5 * times[1], times


def test_notes_do_not_recompile_a_compiled_model():
    """The issue's run: a checkpointed model compiled after memfit.apply hit dynamo's recompile
    limit, since each call's note changed a Python counter the compiled code guarded on."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()

    @torch.compile(backend=counter)
    def region(x):
        note("checkpoint_region")
        with scope("checkpoint_op"):
            return x * 2

    torch._dynamo.reset()
    with collecting():  # as while tracing: the notes count
        for _ in range(12):
            region(torch.ones(3))
        take()
    torch._dynamo.reset()  # its caches hold fake tensors
    assert counter.frame_count == 1
