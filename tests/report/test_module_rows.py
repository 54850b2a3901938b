"""Repeated blocks folded into one row with a count; what differs keeps its own row."""

from __future__ import annotations

from memfit.profile import ModuleMemory
from memfit.report.module_rows import fold_repeated
from memfit.report.text import profile_text

MiB = 2**20


def _module(fqn: str, kind: str, own: int, total: int | None = None) -> ModuleMemory:
    return ModuleMemory(
        fqn=fqn, module_type=kind, self_activation_bytes=own, activation_bytes=total or own
    )


def test_equal_blocks_fold_and_a_different_one_stays_apart() -> None:
    modules = [_module(f"layers.{k}.mlp.fc1", "Linear", 5 * MiB) for k in range(8)]
    modules.append(_module("layers.8.mlp.fc1", "Linear", MiB))  # checkpointed: keeps less
    modules.append(_module("lm_head", "Linear", 20 * MiB))
    rows = fold_repeated(modules)
    assert [(r.label, r.count, r.self_activation_bytes) for r in rows] == [
        ("lm_head", 1, 20 * MiB),
        ("layers.0-7.mlp.fc1", 8, 5 * MiB),
        ("layers.8.mlp.fc1", 1, MiB),
    ]


def test_two_numbered_levels_and_gaps() -> None:
    modules = [_module(f"stages.{s}.{b}", "Block", MiB) for s, b in ((0, 0), (0, 2), (1, 0))]
    modules.append(_module("head.0", "Linear", MiB))
    rows = fold_repeated(modules)
    assert {r.label: r.count for r in rows} == {"stages.0,1.0,2": 3, "head.0": 1}


def test_the_terminal_table_counts_and_says_when(make_profile) -> None:
    text = profile_text(make_profile(), top=20)
    assert "by module: what each keeps for backward, alive when forward ends" in text
    assert "the peak above is at forward in layers.11.mlp at aten.gelu" in text
    row = next(line for line in text.splitlines() if line.startswith("layers.0-11 "))
    assert "x12" in row and "40.00 MiB" in row
    assert sum(1 for line in text.splitlines() if line.startswith("layers.")) == 13  # 12 + 1
