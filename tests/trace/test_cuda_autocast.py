"""CUDA autocast emulated on CPU tensors, checked against the real CUDA autocast.

A CUDA build of torch runs forward on fake CUDA tensors without a GPU, so there the real
AutocastCUDA kernels are the oracle; on a CPU build those tests skip.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from memfit.trace.cuda.autocast import cuda_autocast, unknown_ops
from memfit.trace.cuda.autocast_policy import CUDA_AUTOCAST_POLICY, registered_cuda_autocast_ops

cuda_build = pytest.mark.usefixtures("fake_cuda_oracle")  # tests/conftest.py


@contextlib.contextmanager
def real_cuda_autocast(dtype):
    # torch.autocast("cuda") disables itself without a GPU; set the state directly
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)


CASES = {
    "linear": lambda x, w, h, i: F.linear(x, w),
    "matmul": lambda x, w, h, i: x @ w.t(),
    "layer_norm": lambda x, w, h, i: F.layer_norm(x, (8,)),
    "softmax_of_bf16": lambda x, w, h, i: torch.softmax(h, -1),
    "sum_of_bf16": lambda x, w, h, i: h.sum(),
    "cat": lambda x, w, h, i: torch.cat([x, h]),
    "addcmul": lambda x, w, h, i: torch.addcmul(x, h, h),
    "pow": lambda x, w, h, i: h.pow(2),
    "log_softmax": lambda x, w, h, i: F.log_softmax(h, -1),
    "cross_entropy": lambda x, w, h, i: F.cross_entropy(h, i),
    "mul_mixed": lambda x, w, h, i: x * h,
    "norm": lambda x, w, h, i: h.norm(),
    "rms_norm": lambda x, w, h, i: F.rms_norm(h, (8,)),
    "gelu": lambda x, w, h, i: F.gelu(h),
    "exp": lambda x, w, h, i: h.exp(),
    "bmm": lambda x, w, h, i: torch.bmm(x[None], w.t()[None]),
    "mse_loss": lambda x, w, h, i: F.mse_loss(h, h),
}


def run(case, device, context):
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(4, 8, device=device, requires_grad=True)
        w = torch.randn(16, 8, device=device, requires_grad=True)
        h = torch.randn(4, 8, device=device).bfloat16()
        i = torch.zeros(4, dtype=torch.long, device=device)
        with context():
            return CASES[case](x, w, h, i).dtype


@cuda_build
@pytest.mark.parametrize("case", list(CASES))
def test_output_dtypes_match_real_cuda_autocast(case):
    real = run(case, "cuda", lambda: real_cuda_autocast(torch.bfloat16))
    emulated = run(case, "cpu", lambda: cuda_autocast(torch.bfloat16))
    assert emulated == real


def test_differs_from_cpu_autocast_where_cuda_does():
    cpu = run("layer_norm", "cpu", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    emulated = run("softmax_of_bf16", "cpu", lambda: cuda_autocast(torch.bfloat16))
    assert emulated == torch.float32  # CUDA's fp32_set_opt_dtype list; CPU autocast keeps bf16
    assert cpu in (torch.float32, torch.bfloat16)


def test_the_cpu_kernels_are_back_after_exit():
    before = run("softmax_of_bf16", "cpu", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    with cuda_autocast(torch.bfloat16):
        pass
    after = run("softmax_of_bf16", "cpu", lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert before == after == torch.bfloat16


class CountCopies(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten._to_copy.default:
            self.shapes.append(tuple(out.shape))
        return out


def test_weights_are_cast_once_per_region():
    with FakeTensorMode():
        w = torch.randn(16, 8, requires_grad=True)
        x = torch.randn(4, 8)
        with cuda_autocast(torch.bfloat16), CountCopies() as copies:
            F.linear(x, w)
            F.linear(x, w)
        # the weight (a leaf that requires grad) is cast once and cached; the input twice
        assert copies.shapes.count((16, 8)) == 1
        assert copies.shapes.count((4, 8)) == 2


def test_policy_covers_every_registered_op_but_the_known_new_ones():
    assert registered_cuda_autocast_ops() - set(CUDA_AUTOCAST_POLICY) == unknown_ops()
    assert len(unknown_ops()) <= 3
