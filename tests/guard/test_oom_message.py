"""The OOM message parser reads the figures of every format PyTorch has used."""

from __future__ import annotations

import pytest

from memfit.guard import parse_oom_message

GiB, MiB = 1024**3, 1024**2

CUDA_NOW = (
    "CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of 10.56 GiB of "
    "which 3.49 GiB is free. Process 62912 has 494.00 MiB memory in use. Including non-PyTorch "
    "memory, this process has 7.06 GiB memory in use. Of the allocated memory 6.78 GiB is "
    "allocated by PyTorch, with 57.88 MiB allocated in private pools (e.g., CUDA Graphs), and "
    "97.98 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is "
    "large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
CUDA_2_1 = (
    "CUDA out of memory. Tried to allocate 570.00 MiB. GPU 0 has a total capacty of 79.25 GiB of "
    "which 103.50 MiB is free. Including non-PyTorch memory, this process has 79.14 GiB memory in "
    "use. Of the allocated memory 76.38 GiB is allocated by PyTorch, and 2.24 GiB is reserved by "
    "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "max_split_size_mb to avoid fragmentation."
)
CUDA_2_0 = (
    "CUDA out of memory. Tried to allocate 36.00 MiB (GPU 1; 7.93 GiB total capacity; 130.35 MiB "
    "already allocated; 47.06 MiB free; 188.00 MiB reserved in total by PyTorch) If reserved "
    "memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation."
)
CUDA_1_4 = (
    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 10.92 GiB total capacity; 8.57 MiB "
    "already allocated; 9.28 GiB free; 4.68 MiB cached)"
)
HIP = (
    "HIP out of memory. Tried to allocate 2.00 GiB. GPU 3 has a total capacity of 191.98 GiB of "
    "which 1.25 GiB is free. Of the allocated memory 187.10 GiB is allocated by PyTorch, and "
    "1.50 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large "
    "try setting PYTORCH_HIP_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
ASYNC = (
    "Allocation on device 5 would exceed allowed memory. (out of memory)\n"
    "Currently allocated     : 9.79 GiB\n"
    "Requested               : 1.00 GiB\n"
    "Device limit            : 10.00 GiB\n"
    "Free (according to CUDA): 0 bytes\n"
    "PyTorch limit (set by user-supplied memory fraction)\n"
    "                        : 17179869184.00 GiB"
)
MPS = (
    "MPS backend out of memory (MPS allocated: 18.13 GB, other allocations: 1.25 GB, max "
    "allowed: 20.40 GB). Tried to allocate 1.02 GB on private pool. Use "
    "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations (may "
    "cause system failure)."
)


def _gib(x: float) -> int:
    return int(x * GiB)


def _mib(x: float) -> int:
    return int(x * MiB)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            CUDA_NOW,
            dict(
                backend="cuda",
                device_index=0,
                requested_bytes=_gib(4),
                total_bytes=_gib(10.56),
                free_bytes=_gib(3.49),
                process_bytes=_gib(7.06),
                allocated_bytes=_gib(6.78),
                reserved_unallocated_bytes=_mib(97.98),
                reserved_bytes=None,
            ),
        ),
        (
            CUDA_2_1,
            dict(
                backend="cuda",
                device_index=0,
                requested_bytes=_mib(570),
                total_bytes=_gib(79.25),
                free_bytes=_mib(103.5),
                process_bytes=_gib(79.14),
                allocated_bytes=_gib(76.38),
                reserved_unallocated_bytes=_gib(2.24),
                reserved_bytes=None,
            ),
        ),
        (
            CUDA_2_0,
            dict(
                backend="cuda",
                device_index=1,
                requested_bytes=_mib(36),
                total_bytes=_gib(7.93),
                free_bytes=_mib(47.06),
                process_bytes=None,
                allocated_bytes=_mib(130.35),
                reserved_unallocated_bytes=None,
                reserved_bytes=_mib(188),
            ),
        ),
        (
            CUDA_1_4,
            dict(
                backend="cuda",
                device_index=0,
                requested_bytes=_mib(20),
                total_bytes=_gib(10.92),
                free_bytes=_gib(9.28),
                allocated_bytes=_mib(8.57),
                reserved_bytes=_mib(4.68),
            ),
        ),
        (
            HIP,
            dict(
                backend="hip",
                device_index=3,
                requested_bytes=_gib(2),
                total_bytes=_gib(191.98),
                free_bytes=_gib(1.25),
                allocated_bytes=_gib(187.10),
                reserved_unallocated_bytes=_gib(1.5),
            ),
        ),
        (
            ASYNC,
            dict(
                backend="cuda-async",
                device_index=5,
                requested_bytes=_gib(1),
                total_bytes=_gib(10),
                free_bytes=0,
                allocated_bytes=_gib(9.79),
            ),
        ),
        (
            MPS,
            dict(
                backend="mps",
                device_index=None,
                requested_bytes=_gib(1.02),
                total_bytes=_gib(20.40),
                allocated_bytes=_gib(18.13),
            ),
        ),
    ],
    ids=["cuda", "cuda-2.1-typo", "cuda-2.0", "cuda-1.4", "hip", "cudaMallocAsync", "mps"],
)
def test_figures(text: str, expected: dict[str, object]) -> None:
    info = parse_oom_message(text)
    for field, value in expected.items():
        assert getattr(info, field) == value, field
    assert info.message == text


def test_unknown_text_gives_no_figures_and_never_raises() -> None:
    info = parse_oom_message("something odd")
    assert info.backend == "unknown" and info.requested_bytes is None
    assert info.summary() == "no figures in the message"
    assert info.to_dict()["message"] == "something odd"


def test_summary_line() -> None:
    assert parse_oom_message(CUDA_NOW).summary() == (
        "tried 4.00 GiB, 3.49 GiB free of 10.56 GiB, 6.78 GiB allocated by PyTorch, "
        "97.98 MiB cached but unused"
    )
