"""Malformed saved files, reports, devices and guard settings from Python: each raises a
MemfitError that names the value, what is allowed and the fix, within 2 seconds (as
``test_api.py``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

import memfit
from memfit.guard import OOMGuard
from memfit.plan.plan import Plan
from memfit.profile import MemoryProfile
from memfit.report import load_snapshot

from .files import profile
from .test_api import Tiny, ids

GOOD = profile().to_dict()


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in GOOD.items() if k != key}


def guard(**options: Any) -> Any:
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return OOMGuard(lambda batch: None, optimizer=opt, model=model, **options)


def read(name: str, kind: Any = Plan) -> Any:
    def call(d: Path) -> Any:
        return kind.from_json((d / name).read_text())

    return call


CASES: list[tuple[str, Any, tuple[str, ...]]] = [
    # saved plans
    ("plan-json-empty", lambda d: Plan.from_json("{}"), ("not a memfit plan", "--out plan.json")),
    ("plan-json-list", lambda d: Plan.from_json("[]"), ("not a memfit plan", "list")),
    ("plan-json-bad", lambda d: Plan.from_json("{plan"), ("not valid JSON", "Plan.to_json()")),
    ("plan-json-none", lambda d: Plan.from_json(None), ("not valid JSON",)),  # type: ignore[arg-type]
    (
        "plan-json-techniques",
        lambda d: Plan.from_json('{"techniques": 5}'),
        ("'techniques'", "5", "a list"),
    ),
    (
        "plan-json-technique-type",
        lambda d: Plan.from_json('{"techniques": [{"type": "offload"}]}'),
        ("'offload'", "known:"),
    ),
    (
        "plan-json-technique-notype",
        lambda d: Plan.from_json('{"techniques": [{"n": 2}]}'),
        ("technique 0", "'type'"),
    ),
    (
        "plan-json-technique-setting",
        lambda d: Plan.from_json('{"techniques": [{"type": "micro_batch", "k": 2}]}'),
        ("['k']", "takes: n"),
    ),
    (
        "plan-json-technique-missing",
        lambda d: Plan.from_json('{"techniques": [{"type": "micro_batch"}]}'),
        ("micro_batch", "'n'"),
    ),
    (
        "plan-json-budget",
        lambda d: Plan.from_json('{"techniques": [], "budget": "16GiB"}'),
        ("'budget'", "'16GiB'", "whole number"),
    ),
    (
        "plan-json-budget-neg",
        lambda d: Plan.from_json('{"techniques": [], "budget": -1}'),
        ("'budget'", "-1", "0 or more"),
    ),
    (
        "plan-json-device",
        lambda d: Plan.from_json('{"techniques": [], "device": 80}'),
        ("'device'", "80", "a string"),
    ),
    (
        "plan-json-step",
        lambda d: Plan.from_json('{"techniques": [], "step_time_s": "fast"}'),
        ("'step_time_s'", "'fast'", "seconds"),
    ),
    (
        "plan-json-frontier",
        lambda d: Plan.from_json('{"techniques": [], "frontier": [5]}'),
        ("frontier point 0", "5", "object"),
    ),
    (
        "plan-json-frontier-field",
        lambda d: Plan.from_json(
            '{"techniques": [], "frontier": '
            '[{"label": "a", "peak_reserved": 1, "step_time_s": -1}]}'
        ),
        ("'step_time_s'", "-1", "0 or more"),
    ),
    (
        "plan-json-notes",
        lambda d: Plan.from_json('{"techniques": [], "notes": "x"}'),
        ("'notes'", "a list"),
    ),
    (
        "plan-json-notes-item",
        lambda d: Plan.from_json('{"techniques": [], "notes": [1]}'),
        ("'notes' item 0", "a string"),
    ),
    (
        "plan-json-profile",
        lambda d: Plan.from_json('{"techniques": [], "profile": 5}'),
        ("'profile'", "5", "object"),
    ),
    (
        "plan-json-extra",
        lambda d: Plan.from_json('{"techniques": [], "gpu": "h100"}'),
        ("['gpu']", "known:"),
    ),
    ("plan-file-technique", read("plan_technique.json"), ("'offload_everything'",)),
    # saved profiles
    (
        "profile-empty",
        lambda d: MemoryProfile.from_json("{}"),
        ("not a memfit profile or plan", "memfit estimate"),
    ),
    (
        "profile-list",
        lambda d: MemoryProfile.from_json("[1]"),
        ("list", "not a memfit profile", "to_json()"),
    ),
    ("profile-bad", lambda d: MemoryProfile.from_json("{x"), ("not valid JSON",)),
    (
        "profile-badtype",
        read("profile_badtype.json", MemoryProfile),
        ("'peak_allocated'", "'a lot'"),
    ),
    ("profile-negative", read("profile_negative.json", MemoryProfile), ("'peak_reserved'", "-5")),
    ("profile-v2", read("profile_v2.json", MemoryProfile), ("schema_version 2", "Re-create")),
    (
        "profile-category",
        read("profile_category.json", MemoryProfile),
        ("'weights'", "param, buffer"),
    ),
    ("profile-phase", read("profile_phase.json", MemoryProfile), ("'warmup'", "forward")),
    ("profile-extra", read("profile_extra.json", MemoryProfile), ("['gpu']", "known:")),
    ("profile-float", read("profile_float.json", MemoryProfile), ("'device_memory'", "1.5")),
    ("profile-modules", read("profile_modules.json", MemoryProfile), ("module 0", "'fqn'")),
    (
        "profile-missing",
        lambda d: MemoryProfile.from_dict(without("model")),
        ("no field 'model'", "to_json()"),
    ),
    (
        "profile-timeline",
        lambda d: MemoryProfile.from_dict(
            {**GOOD, "timeline": [{**GOOD["timeline"][0], "phase": 3}]}
        ),
        ("'phase'", "3", "a string"),
    ),
    # report
    ("report-object", lambda d: memfit.report(5, d / "r.html"), ("int", "MemoryProfile", "Plan")),
    (
        "report-out-dir",
        lambda d: memfit.report(profile(), d / "missing" / "r.html"),
        ("missing", "does not exist", "mkdir"),
    ),
    ("report-out-folder", lambda d: memfit.report(profile(), d / "adir"), ("adir", "is a folder")),
    (
        "report-png-file",
        lambda d: memfit.report(profile(), d / "r.html", png_dir=d / "afile.png"),
        ("afile.png", "is a file"),
    ),
    (
        "report-budget",
        lambda d: memfit.report(profile(), d / "r.html", budget="16"),
        ("'16'", "'16GiB'"),
    ),
    (
        "report-frontier",
        lambda d: memfit.report(
            profile(), d / "r.html", frontier=[memfit.report.FrontierPoint("a", -1, 1.0)]
        ),
        ("'a'", "peak_reserved=-1", "positive"),
    ),
    (
        "snapshot-missing",
        lambda d: load_snapshot(d / "nope.pickle"),
        ("nope.pickle", "does not exist", "_dump_snapshot"),
    ),
    ("snapshot-evil", lambda d: load_snapshot(d / "snap_evil.pickle"), ("os.system", "refuses")),
    (
        "snapshot-negative",
        lambda d: load_snapshot(d / "snap_negative.pickle"),
        ("device_traces[0][1]", "size -5"),
    ),
    (
        "snapshot-nokey",
        lambda d: load_snapshot(d / "snap_nokey.pickle"),
        ("device_traces[0][1]", "no 'addr'"),
    ),
    (
        "snapshot-segment",
        lambda d: load_snapshot(d / "snap_segment.pickle"),
        ("segments[0]", "total_size -1"),
    ),
    # devices and the zoo
    (
        "device-name",
        lambda d: memfit.get_device("a100-16gb"),
        ("'a100-16gb'", "a100-80gb", "memfit devices"),
    ),
    ("device-type", lambda d: memfit.get_device(80), ("80", "'h100-80gb'")),
    ("zoo-name", lambda d: memfit.zoo.get("llama-7b"), ("'llama-7b'", "known models")),
    ("zoo-type", lambda d: memfit.zoo.get(5), ("5", "known models")),
    # the guard
    (
        "guard-step",
        lambda d: OOMGuard("train", optimizer=torch.optim.SGD(Tiny().parameters(), lr=1)),
        ("'train'", "not callable", "step_fn(batch)"),
    ),
    (
        "guard-optimizer",
        lambda d: OOMGuard(lambda b: None, optimizer="adamw"),
        ("'adamw'", "torch.optim.Optimizer", "optimizer=opt"),
    ),
    ("guard-none", lambda d: OOMGuard(lambda b: None), ("refers to none", "optimizer=opt")),
    ("guard-min", lambda d: guard(min_micro_batch_size=0), ("min_micro_batch_size=0", ">= 1")),
    ("guard-grow", lambda d: guard(grow_after=-1), ("grow_after=-1", ">= 0")),
    ("guard-thrash", lambda d: guard(thrash_steps=0), ("thrash_steps=0", ">= 1")),
    ("guard-reduction", lambda d: guard(loss_reduction="avg"), ("'avg'", "'mean', 'sum'")),
    ("guard-copy", lambda d: guard(optimizer_copy="gpu"), ("'gpu'", "'cpu'")),
    ("guard-snapshot", lambda d: guard(snapshot_device="tpu"), ("'tpu'", "'cpu'")),
    ("guard-on-thrash", lambda d: guard(on_thrash="panic"), ("'panic'", "'shrink'")),
    ("guard-distributed", lambda d: guard(distributed="yes"), ("'yes'", "'auto'")),
    ("guard-splitter", lambda d: guard(splitter=3), ("splitter=3", "not callable")),
    ("guard-weight", lambda d: guard(weight_fn="tokens"), ("'tokens'", "not callable")),
    ("guard-option", lambda d: guard(retries=3), ("['retries']", "min_micro_batch_size")),
    ("guard-batch", lambda d: guard()(5), ("int", "no tensor", "splitter=fn")),
    (
        "guard-batch-small",
        lambda d: guard(min_micro_batch_size=4)(ids()),
        ("min_micro_batch_size=4", "2 samples"),
    ),
]


@pytest.mark.parametrize(("call", "must"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_file_or_setting_says_what_to_do(call, must, files) -> None:
    started = time.perf_counter()
    with pytest.raises(memfit.MemfitError) as caught:
        call(files)
    took = time.perf_counter() - started
    message = str(caught.value)
    for fragment in must:
        assert fragment in message, (fragment, message)
    assert took < 2.0, f"{took:.2f} s"
