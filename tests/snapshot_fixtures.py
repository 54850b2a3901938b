"""Fixtures for the snapshot and report tests (a pytest plugin of tests/conftest.py): a PyTorch
memory snapshot and a predicted profile, synthetic but in the real formats.

The snapshot imitates what ``torch.cuda.memory._dump_snapshot`` writes for a small training loop
(setup, then steps of forward, backward and AdamW), with Python stacks like ``stacks='python'``
records them: weights from ``nn.Module._apply``, activations under a module's ``forward``, no
stack for autograd's device thread, and ``torch/optim`` for the optimizer step. Every number is
known: sizes are whole MiB, so expected totals can be written down by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from memfit.profile import (
    Category,
    LiveTensor,
    MemoryProfile,
    ModuleMemory,
    Phase,
    TimelineEvent,
)

MiB = 2**20
SEGMENT = 20 * MiB

_USER = {"filename": "/home/u/train.py", "line": 40, "name": "main"}
_MODULE_APPLY = [
    {"filename": "/x/torch/nn/modules/module.py", "line": 900, "name": "_apply"},
    {"filename": "/x/torch/nn/modules/module.py", "line": 1100, "name": "to"},
    _USER,
]
_OPTIM = [
    {"filename": "/x/torch/optim/adamw.py", "line": 300, "name": "_multi_tensor_adamw"},
    {"filename": "/x/torch/optim/optimizer.py", "line": 480, "name": "step"},
    _USER,
]


def _forward_frames(line: int, layer: int) -> list[dict[str, Any]]:
    return [
        {"filename": "/x/torch/nn/modules/linear.py", "line": 125, "name": "forward"},
        {"filename": "/x/torch/nn/modules/module.py", "line": 1750, "name": "_call_impl"},
        {"filename": "/home/u/model.py", "line": line + layer, "name": "forward"},
        {"filename": "/x/torch/nn/modules/module.py", "line": 1750, "name": "_call_impl"},
        _USER,
    ]


class _Recorder:
    def __init__(self, metadata: bool) -> None:
        self.trace: list[dict[str, Any]] = []
        self.addr = itertools.count(0x7F0000000000, 0x100000)  # distinct 1 MiB-aligned addresses
        self.live: dict[int, int] = {}
        self.allocated = 0
        self.reserved = 0
        self.segments: list[int] = []
        self.metadata = metadata
        self.time = 0

    def alloc(self, size: int, frames: list[dict[str, Any]], meta: str = "") -> int:
        while self.allocated + size > self.reserved:  # grow the pool a segment at a time
            self.segments.append(SEGMENT)
            self.reserved += SEGMENT
            self._event("segment_alloc", next(self.addr), SEGMENT, frames)
        addr = next(self.addr)
        self.live[addr] = size
        self.allocated += size
        entry = self._event("alloc", addr, size, frames)
        if meta and self.metadata:
            entry["user_metadata"] = "memfit:" + meta
        return addr

    def free(self, addr: int) -> None:
        size = self.live.pop(addr)
        self.allocated -= size
        self._event("free_requested", addr, size, [])
        self._event("free_completed", addr, size, [])

    def _event(self, action: str, addr: int, size: int, frames: list) -> dict[str, Any]:
        self.time += 7
        entry = {
            "action": action,
            "addr": addr,
            "size": size,
            "stream": 0,
            "time_us": self.time,
            "frames": frames,
        }
        self.trace.append(entry)
        return entry


def training_snapshot(
    *, layers: int = 3, steps: int = 2, metadata: bool = False, expandable: bool = False
) -> dict[str, Any]:
    """A snapshot of ``steps`` AdamW steps of an MLP of ``layers`` 4 MiB linear layers.

    Per step: input 1 MiB; each layer saves a 2 MiB activation; backward makes a 4 MiB grad per
    layer (kept) and a 1 MiB temporary per layer (freed); the first step makes 8 MiB of AdamW
    state per layer (kept) and every step a 4 MiB temporary. The peak is at the end of the
    second step's optimizer temporaries... see the tests for the hand-worked numbers.
    """
    r = _Recorder(metadata)
    weights = [r.alloc(4 * MiB, _MODULE_APPLY, "phase=setup;category=param") for _ in range(layers)]
    del weights
    state: list[int] = []
    grads: list[int] = []
    for _ in range(steps):
        x = r.alloc(1 * MiB, [_USER], "phase=setup;category=other")
        saved = [
            r.alloc(2 * MiB, _forward_frames(10, k), f"phase=forward;module=layers.{k};type=Linear")
            for k in range(layers)
        ]
        loss = r.alloc(
            512,
            [
                {"filename": "/x/torch/nn/functional.py", "line": 3000, "name": "cross_entropy"},
                _USER,
            ],
        )
        for k in reversed(range(layers)):
            tmp = r.alloc(1 * MiB, [])
            if len(grads) < layers:
                grads.append(r.alloc(4 * MiB, []))
            r.free(tmp)
            r.free(saved[k])
        r.free(loss)
        if not state:
            state = [r.alloc(8 * MiB, _OPTIM) for _ in range(layers)]
        tmp = r.alloc(4 * MiB, _OPTIM)
        r.free(tmp)
        r.free(x)
    blocks = [
        {
            "address": addr,
            "size": size,
            "requested_size": size,
            "state": "active_allocated",
            "frames": [],
        }
        for addr, size in r.live.items()
    ]
    free_bytes = r.reserved - r.allocated
    blocks.append(
        {"address": 0, "size": free_bytes, "requested_size": 0, "state": "inactive", "frames": []}
    )
    segment = {
        "device": 0,
        "address": 0x7E0000000000,
        "total_size": r.reserved,
        "stream": 0,
        "segment_type": "large",
        "segment_pool_id": (0, 0),
        "allocated_size": r.allocated,
        "active_size": r.allocated,
        "requested_size": r.allocated,
        "is_expandable": False,
        "frames": [],
        "blocks": blocks,
    }
    return {
        "segments": [segment],
        "device_traces": [r.trace],
        "allocator_settings": {
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True" if expandable else "",
            "max_split_size": 2**64 - 1,
            "garbage_collection_threshold": 0.0,
            "expandable_segments": expandable,
            "roundup_power2_divisions": {"1": 0, "2": 0},
        },
    }


def predicted_profile(
    *, timeline_points: int = 400, device_memory: int = 80 * 2**30
) -> MemoryProfile:
    """A profile shaped like the estimator's, for rendering tests (numbers made up but exact)."""
    GiB = 2**30
    events = []
    n = timeline_points
    for i in range(n):
        if i < n // 2:
            phase, alloc = Phase.FORWARD, 3 * GiB + i * (6 * GiB // (n // 2))
        elif i < 9 * n // 10:
            phase, alloc = Phase.BACKWARD, 9 * GiB - (i - n // 2) * (5 * GiB // (4 * n // 10))
        else:
            phase, alloc = Phase.OPTIMIZER, 5 * GiB
        events.append(
            TimelineEvent(
                index=i,
                phase=phase,
                allocated=alloc,
                reserved=alloc + GiB // 2,
                module=f"layers.{i % 12}",
            )
        )
    modules = [ModuleMemory(fqn="", module_type="GPT2", param_bytes=GiB, activation_bytes=5 * GiB)]
    for k in range(12):
        modules.append(
            ModuleMemory(
                fqn=f"layers.{k}",
                module_type="Block",
                activation_bytes=400 * MiB,
                self_activation_bytes=40 * MiB,
            )
        )
        modules.append(
            ModuleMemory(
                fqn=f"layers.{k}.mlp",
                module_type="MLP",
                activation_bytes=250 * MiB,
                self_activation_bytes=(250 - k) * MiB,
            )
        )
    return MemoryProfile(
        source="estimate",
        model="gpt2",
        device="h100-80gb",
        device_memory=device_memory,
        precision="bf16-mixed",
        optimizer="adamw",
        batch="8x1024",
        peak_allocated=9 * GiB,
        peak_reserved=9 * GiB + GiB // 2,
        by_category={
            Category.PARAM: GiB,
            Category.GRAD: GiB,
            Category.OPTIMIZER: 2 * GiB,
            Category.ACTIVATION: 4 * GiB,
            Category.TEMPORARY: GiB,
        },
        modules=tuple(modules),
        timeline=tuple(events),
        peak_phase=Phase.FORWARD,
        peak_module="layers.11.mlp",
        peak_op="aten.gelu",
        alive_at_peak=(
            LiveTensor(
                num_bytes=768 * MiB,
                category=Category.ACTIVATION,
                module="layers.11.mlp",
                op="aten.gelu",
                shape=(8, 1024, 3072),
                dtype="bf16",
            ),
        ),
        outside_pytorch={"CUDA context": 520 * MiB},
    )


@pytest.fixture
def make_snapshot() -> Callable[..., dict[str, Any]]:
    """``make_snapshot(layers=3, steps=2, metadata=False, expandable=False)``: a snapshot dict."""
    return training_snapshot


@pytest.fixture
def make_profile() -> Callable[..., MemoryProfile]:
    """``make_profile(timeline_points=400, device_memory=80 GiB)``: an estimator-like profile."""
    return predicted_profile
