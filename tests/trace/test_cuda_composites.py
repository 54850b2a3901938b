"""Composites that branch on the device take the CUDA branch on CPU tensors.

Forward op sequences on fake CUDA tensors (a CUDA build of torch runs forward without a GPU) are
the oracle; on a CPU build those comparisons skip and the direct checks still run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from memfit.devices import get_device
from memfit.trace.cuda.composites import cuda_composites
from memfit.trace.cuda.sdpa import SdpaBackend
from memfit.trace.cuda.stack import DEFAULT_STACK

cuda_build = pytest.mark.usefixtures("fake_cuda_oracle")  # tests/conftest.py


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is not torch.ops.prim.device.default and func.__name__ != "detach.default":
            outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            self.ops.append((func.__name__, [(tuple(t.shape), t.dtype) for t in outputs]))
        return out


def forward_ops(device: str, fn):
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(4, 16, 64, device=device, requires_grad=True)
        w = torch.randn(64, device=device, requires_grad=True)
        with OpLog() as log:
            fn(x, w)
    return log.ops


CASES = {
    "dropout": lambda x, w: F.dropout(x, 0.1, True),
    "dropout_inplace": lambda x, w: F.dropout(x.clone(), 0.1, True, inplace=True),
    "rms_norm": lambda x, w: F.rms_norm(x, (64,), w, 1e-6),
    "rms_norm_bf16": lambda x, w: F.rms_norm(x.bfloat16(), (64,), w.bfloat16(), 1e-6),
}


@cuda_build
@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_fake_cuda(case):
    cuda = forward_ops("cuda", CASES[case])
    with cuda_composites(get_device("h100-80gb"), DEFAULT_STACK):
        emulated = forward_ops("cpu", CASES[case])
    assert emulated == cuda


def test_dropout_saves_a_one_byte_mask_not_a_float_one():
    with cuda_composites(get_device("h100-80gb"), DEFAULT_STACK):
        ops = forward_ops("cpu", CASES["dropout"])
    assert ops == [
        ("native_dropout.default", [((4, 16, 64), torch.float32), ((4, 16, 64), torch.bool)])
    ]


def saved_shapes(fn):
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return shapes


def test_attention_uses_the_fused_kernel_and_keeps_no_scores():
    with FakeTensorMode(), cuda_composites(get_device("h100-80gb"), DEFAULT_STACK) as chosen:
        q = torch.randn(2, 4, 128, 64, dtype=torch.bfloat16, requires_grad=True)
        shapes = saved_shapes(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert chosen == [SdpaBackend.CUDNN]
    assert (2, 4, 128, 128) not in shapes  # no B x H x L x L scores
    # the log-sum-exp, one float per query row (torch 2.6's cuDNN kernel shapes it (2, 4, 128))
    assert (2, 4, 128, 1) in shapes or (2, 4, 128) in shapes


def test_math_fallback_on_cpu_is_gone_inside_the_context():
    with FakeTensorMode():
        q = torch.randn(2, 4, 128, 64, requires_grad=True)
        cpu = type(F.scaled_dot_product_attention(q, q, q, dropout_p=0.1).grad_fn).__name__
        with cuda_composites(get_device("h100-80gb"), DEFAULT_STACK):
            cuda = type(F.scaled_dot_product_attention(q, q, q, dropout_p=0.1).grad_fn).__name__
    assert cuda == "ScaledDotProductEfficientAttentionBackward0"  # fp32 on sm90: efficient
    assert cpu != cuda
