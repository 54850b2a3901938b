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


def grouped_call(dtype, q_heads=8, kv_heads=2, enable_gqa=True) -> SdpaCall:
    q = torch.empty(2, q_heads, 256, 64, dtype=dtype, device="meta", requires_grad=True)
    kv = torch.empty(2, kv_heads, 256, 64, dtype=dtype, device="meta", requires_grad=True)
    return SdpaCall.of(q, kv, kv, None, 0.0, True, enable_gqa)


@pytest.mark.parametrize("device", ["h200", "a100-80gb"])
def test_grouped_query_attention_in_fp32_runs_the_math_kernel(device):
    # the memory-efficient kernel is compiled without grouped-query support
    # (check_batch_size_and_num_heads_dense<false> in sdp_utils.cpp), and flash and cuDNN take
    # half precision only: transformers' GQA call (enable_gqa=True, no mask) in fp32 is math
    spec = get_device(device)
    assert choose_backend(grouped_call(torch.float32), spec, DEFAULT_STACK) is SdpaBackend.MATH
    mha = grouped_call(torch.float32, kv_heads=8)
    assert choose_backend(mha, spec, DEFAULT_STACK) is SdpaBackend.EFFICIENT
    fused = (SdpaBackend.CUDNN, SdpaBackend.FLASH)
    assert choose_backend(grouped_call(torch.bfloat16), spec, DEFAULT_STACK) in fused
    # without enable_gqa, different head counts are an error for every kernel but math
    no_gqa = grouped_call(torch.bfloat16, enable_gqa=False)
    assert choose_backend(no_gqa, spec, DEFAULT_STACK) is SdpaBackend.MATH


def test_kernels_the_user_disabled_are_skipped():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    h200 = get_device("h200")
    assert choose_backend(call(torch.bfloat16, 64), h200, DEFAULT_STACK) is SdpaBackend.CUDNN
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
        assert choose_backend(call(torch.bfloat16, 64), h200, DEFAULT_STACK) is SdpaBackend.FLASH
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        choice = choose_backend(call(torch.bfloat16, 64, mask="float"), h200, DEFAULT_STACK)
        assert choice is SdpaBackend.EFFICIENT
    finally:
        torch.backends.cuda.enable_cudnn_sdp(True)
