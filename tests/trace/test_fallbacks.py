"""Operators fake tensors cannot run: an upper bound or an assumption, a warning, no crash."""

from __future__ import annotations

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
