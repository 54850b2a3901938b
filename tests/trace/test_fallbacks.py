"""Operators fake tensors cannot run: an upper bound or an assumption, a warning, no crash."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memfit


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x):
        y = self.linear(x)
        selected = y[y > 0]  # boolean indexing: size depends on values
        if (y.sum() > 0).item():  # reads a value
            y = y * 2
        return y.mean() + selected.sum() + torch.unique(x).sum()


def test_data_dependent_operators_are_bounded_and_reported():
    profile = memfit.estimate(DataDependent(), "float32[32,16]", precision="fp32")
    text = " ".join(profile.warnings)
    assert "aten.index.Tensor" in text and "upper bound" in text
    assert "aten._local_scalar_dense" in text and "assumed True" in text
    assert "aten._unique2" in text
    assert profile.peak_allocated > 0
    # each with its calls and the bytes it made up: every element of y (512 float32) selected;
    # unique's values, inverse and counts for 512 elements (float32, int64, int64)
    assert "upper bound on its memory (1 call, 2.00 KiB of results assumed)" in text
    assert "branch. (1 call, no memory assumed)" in text
    unique = next(w for w in profile.warnings if w.startswith("aten._unique2"))
    assert unique.endswith(f"(1 call, {(512 * (4 + 8 + 8)) // 1024}.00 KiB of results assumed)")


class TokensPerExpert(nn.Module):
    """JetMoE's routing: tokens sorted by expert, split by counts read from the tensor."""

    def __init__(self, experts: int = 4, width: int = 16) -> None:
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.experts = nn.ModuleList(nn.Linear(width, 4 * width) for _ in range(experts))

    def forward(self, x):
        tokens = x.reshape(-1, x.shape[-1])
        choice = self.router(tokens).argmax(-1)
        order = choice.argsort()
        counts = torch.bincount(choice, minlength=len(self.experts)).tolist()
        pieces = tokens[order].split(counts)
        return sum(expert(piece).sum() for expert, piece in zip(self.experts, pieces, strict=True))


def test_split_sizes_read_from_values_become_an_even_split():
    # 64 tokens, 4 experts: the counts read as 1 each cannot split 64 rows; each expert gets 16
    # (balanced routing), its output 16 x 64 float32
    step_profile = memfit.estimate(TokensPerExpert(), "float32[4,16,16]", precision="fp32")
    text = " ".join(step_profile.warnings)
    assert "aten.split_with_sizes" in text and "evenly" in text
    from memfit.trace.estimate import trace_step

    trace = trace_step(TokensPerExpert, "float32[4,16,16]", precision="fp32").trace
    outputs = [
        a.size for a in trace.allocations.values() if a.op == "addmm" and a.shape == (16, 64)
    ]
    assert len(outputs) == 4  # one per expert, 16 tokens each


def test_custom_cuda_operator_without_a_fake_implementation():
    # a kernel for CUDA only, as a custom CUDA extension has: fake tensors cannot run it
    library = torch.library.Library("memfit_test", "DEF")
    library.define("double(Tensor x) -> Tensor")
    library.impl("double", lambda x: x * 2, "CUDA")

    class UsesCustom(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, 16)

        def forward(self, x):
            return torch.ops.memfit_test.double(self.linear(x)).mean()

    try:
        profile = memfit.estimate(UsesCustom(), "float32[32,16]", optimizer=None, precision="fp32")
    finally:
        library._destroy()
    warning = next(w for w in profile.warnings if "memfit_test.double" in w)
    assert "shaped like its first input (32, 16)" in warning
    assert "register_fake" in warning
    assert warning.endswith("(1 call, 2.00 KiB of results assumed)")  # 32 x 16 float32


def _model_calling(function: type[torch.autograd.Function]) -> nn.Module:
    class CallsFunction(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(16, 16)

        def forward(self, x):
            return function.apply(self.linear(x)).mean()

    return CallsFunction()


def test_a_triton_kernel_in_an_autograd_function_is_skipped_counted_and_named():
    triton = pytest.importorskip("triton")
    language = pytest.importorskip("triton.language")

    @triton.jit
    def double_kernel(x_ptr, y_ptr, n, BLOCK: language.constexpr):
        i = language.program_id(0) * BLOCK + language.arange(0, BLOCK)
        language.store(y_ptr + i, language.load(x_ptr + i, mask=i < n) * 2, mask=i < n)

    class Doubled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.empty_like(x)
            double_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)
            return y

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    class Allocates(torch.autograd.Function):  # the same memory, no kernel
        @staticmethod
        def forward(ctx, x):
            return torch.empty_like(x)

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    profile = memfit.estimate(_model_calling(Doubled), "float32[32,16]", precision="fp32")
    without = memfit.estimate(_model_calling(Allocates), "float32[32,16]", precision="fp32")
    (warning,) = [w for w in profile.warnings if "Triton kernel" in w]
    # given x and y: 2 x 32 x 16 float32
    assert "double_kernel: 1 launch not run" in warning and "(4.00 KiB in all)" in warning
    assert "allocates nothing itself (0 bytes)" in warning
    assert (profile.peak_allocated, profile.peak_reserved) == (
        without.peak_allocated,
        without.peak_reserved,
    )


class BranchOnAValue(nn.Module):
    """Takes a branch on a value read from the batch, then fails there (Longformer's global
    attention: read as present, an assertion about its shapes fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        if (x > 100).any().item():
            raise AssertionError
        return self.linear(x).sum()


def test_a_failure_after_an_assumed_value_names_the_assumption():
    with pytest.raises(memfit.MemfitError) as caught:
        memfit.estimate(BranchOnAValue(), "float32[4,8]", precision="fp32")
    message = str(caught.value)
    assert "AssertionError" in message
    assert "memfit assumed" in message and "aten._local_scalar_dense" in message
