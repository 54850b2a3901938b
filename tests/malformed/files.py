"""The files a malformed-input case may point at: one folder, written once per test session."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

from memfit.plan.plan import Plan
from memfit.profile import Category, MemoryProfile, Phase, TimelineEvent

MODEL = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(8000, 16)
        self.pos = nn.Embedding(512, 16)
        self.head = nn.Linear(16, 8000)

    def forward(self, input_ids, labels=None):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.head(self.embed(input_ids) + self.pos(positions)).float().mean()


def build():
    return Tiny()


def raises():
    raise RuntimeError("no weights here")


def not_a_module():
    return 42


not_callable = 7


def loss(output, batch):
    return output
"""


def profile() -> MemoryProfile:
    """A small valid profile (no tracing: the cases must answer within 2 s)."""
    return MemoryProfile(
        source="estimate",
        model="tiny",
        device="h100-80gb",
        device_memory=80 * 2**30,
        precision="fp32",
        optimizer="adamw",
        batch="x",
        peak_allocated=3 * 2**20,
        peak_reserved=4 * 2**20,
        by_category={Category.PARAM: 2**20, Category.ACTIVATION: 2 * 2**20},
        timeline=(
            TimelineEvent(index=0, phase=Phase.FORWARD, allocated=2**20, reserved=2**21),
            TimelineEvent(index=1, phase=Phase.BACKWARD, allocated=3 * 2**20, reserved=4 * 2**20),
        ),
    )


def snapshot(**changes: object) -> dict:
    """A small valid snapshot: two allocations and their segment."""
    entries = [
        {"action": "segment_alloc", "addr": 0, "size": 2 << 20, "stream": 0},
        {"action": "alloc", "addr": 0, "size": 1024, "stream": 0},
        {"action": "alloc", "addr": 1024, "size": 512, "stream": 0},
        {"action": "free_completed", "addr": 1024, "size": 512, "stream": 0},
    ]
    data = {
        "segments": [
            {
                "device": 0,
                "address": 0,
                "total_size": 2 << 20,
                "stream": 0,
                "blocks": [{"address": 0, "size": 1024, "state": "active_allocated"}],
            }
        ],
        "device_traces": [entries],
        "allocator_settings": {},
    }
    data.update(changes)
    return data


def entry_with(**fields: object) -> dict:
    good = snapshot()
    entries = list(good["device_traces"][0])
    entries[1] = {**entries[1], **fields}
    entries[1] = {k: v for k, v in entries[1].items() if v is not _DROP}
    return snapshot(device_traces=[entries])


_DROP = object()


def write_all(folder: Path) -> Path:
    """Write every file the cases name into ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(MODEL)
    (folder / "broken.py").write_text("def build(:\n")
    (folder / "notjson.json").write_text("{not json")
    (folder / "other.json").write_text(json.dumps({"name": "resnet", "epochs": 3}))
    (folder / "list.json").write_text("[1, 2, 3]")
    (folder / "empty.json").write_text("{}")
    good = profile().to_dict()
    (folder / "profile.json").write_text(json.dumps(good))
    bad = {
        "badtype": {**good, "peak_allocated": "a lot"},
        "negative": {**good, "peak_reserved": -5},
        "v2": {**good, "schema_version": 2},
        "category": {**good, "by_category": {"weights": 10}},
        "phase": {**good, "timeline": [{**good["timeline"][0], "phase": "warmup"}]},
        "extra": {**good, "gpu": "h100"},
        "float": {**good, "device_memory": 1.5},
        "bool": {**good, "peak_allocated": True},
        "warnings": {**good, "warnings": "none"},
        "modules": {**good, "modules": [{"fqn": 3, "module_type": "Linear"}]},
    }
    for name, data in bad.items():
        (folder / f"profile_{name}.json").write_text(json.dumps(data))
    plan = Plan(techniques=(), budget=16 * 2**30, device="h100-80gb").to_dict()
    (folder / "plan.json").write_text(json.dumps(plan))
    plans = {
        "technique": {**plan, "techniques": [{"type": "offload_everything"}]},
        "setting": {**plan, "techniques": [{"type": "micro_batch", "k": 2}]},
        "budget": {**plan, "budget": "16GiB"},
        "frontier": {**plan, "frontier": [{"label": "x", "peak_reserved": "big"}]},
    }
    for name, data in plans.items():
        (folder / f"plan_{name}.json").write_text(json.dumps(data))
    (folder / "frontier_notlist.json").write_text(json.dumps({"a": 1}))
    (folder / "frontier_point.json").write_text(json.dumps([{"label": "a", "step_time_s": 1}]))
    snapshots = {
        "good": snapshot(),
        "negative": entry_with(size=-5),
        "nokey": entry_with(addr=_DROP),
        "addr": entry_with(addr="0x10"),
        "action": entry_with(action=_DROP),
        "segment": snapshot(segments=[{"device": 0, "total_size": -1, "blocks": []}]),
        "blocks": snapshot(segments=[{"device": 0, "total_size": 1, "blocks": "none"}]),
        "empty": snapshot(device_traces=[[]]),
        "nokeys": {"segments": []},
        "list": [1, 2, 3],
    }
    for name, data in snapshots.items():
        (folder / f"snap_{name}.pickle").write_bytes(pickle.dumps(data))
    (folder / "snap_evil.pickle").write_bytes(
        b"cos\nsystem\n(S'echo hacked'\ntR."  # pickle protocol 0: os.system('echo hacked')
    )
    (folder / "snap_garbage.pickle").write_bytes(b"\x80\x04not a pickle at all")
    (folder / "afile.png").write_bytes(b"")
    (folder / "adir").mkdir(exist_ok=True)
    return folder
