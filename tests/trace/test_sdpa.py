"""SDPA kernel choice against what torch chose on a real H200 (torch 2.11, cuDNN 9.19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memfit.devices import get_device
from memfit.trace.cuda.sdpa import SdpaBackend, SdpaCall, choose_backend
from memfit.trace.cuda.stack import DEFAULT_STACK, CudaStack

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "sdpa_choices_h200.json").read_text())
DTYPES = {
    "torch.float32": torch.float32,
    "torch.bfloat16": torch.bfloat16,
    "torch.float16": torch.float16,
}


def call(dtype, head, dropout=0.0, mask=None, causal=False, length=256) -> SdpaCall:
    q = torch.empty(2, 4, length, head, dtype=dtype, device="meta", requires_grad=True)
    m = None
    if mask == "bool":
        m = torch.empty(length, length, dtype=torch.bool, device="meta")
    elif mask == "float":
        m = torch.empty(length, length, dtype=dtype, device="meta")
    return SdpaCall.of(q, q, q, m, dropout, causal, False)


@pytest.mark.parametrize("case", FIXTURE["cases"], ids=lambda c: "-".join(map(str, c.values())))
def test_matches_torch_on_the_h200(case):
    choice = choose_backend(
        call(DTYPES[case["dtype"]], case["head"], case["dropout"], case["mask"], case["causal"]),
        get_device("h200"),
        DEFAULT_STACK,
    )
    assert choice.value == case["torch"]


def test_older_chips_and_stacks():
    no_cudnn_first = CudaStack(cudnn_sdpa_preferred=False)
    a100 = get_device("a100-80gb")
    assert choose_backend(call(torch.bfloat16, 64), a100, DEFAULT_STACK) is SdpaBackend.FLASH
    assert choose_backend(call(torch.float32, 64), a100, DEFAULT_STACK) is SdpaBackend.EFFICIENT
    # flash takes no arbitrary mask; efficient does
    masked = call(torch.bfloat16, 64, mask="float")
    assert choose_backend(masked, get_device("h100-80gb"), no_cudnn_first) is SdpaBackend.EFFICIENT
    # T4 (sm75) has no flash kernel and no bf16 efficient kernel: math
    t4 = get_device("t4")
    assert choose_backend(call(torch.float16, 64), t4, DEFAULT_STACK) is SdpaBackend.EFFICIENT
    assert choose_backend(call(torch.bfloat16, 64), t4, DEFAULT_STACK) is SdpaBackend.MATH
    # a head dimension the fused kernels cannot align
    assert choose_backend(call(torch.float32, 30), a100, DEFAULT_STACK) is SdpaBackend.MATH
