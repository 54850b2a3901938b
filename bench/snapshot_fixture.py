"""Take a small, real memory snapshot of a tiny model's training steps, as a test fixture.

Run on a machine with a CUDA GPU::

    python bench/snapshot_fixture.py tests/snapshot/fixtures/tiny_train.pickle
    python bench/snapshot_fixture.py tests/snapshot/fixtures/tiny_train_meta.pickle --metadata

It records ``torch.cuda.memory._record_memory_history(stacks="python")`` over model creation and
a few AdamW steps of a two-block MLP, then writes the snapshot (the same data
``torch.cuda.memory._dump_snapshot`` writes) and, beside it, ``<name>.json`` with what PyTorch's
counters said (``max_memory_allocated``, ``max_memory_reserved``) for the tests to check the
replay against. Equal strings are shared before pickling so the file stays well under 1 MB; the
content is unchanged. ``--metadata`` also stamps each allocation with memfit's phase and module
labels (``torch.cuda.memory._set_memory_metadata``), as ``memfit.measure`` may do.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

MAX_BYTES = 1_000_000


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(self.act(self.up(self.norm(x))))


class TinyNet(nn.Module):
    def __init__(self, inputs: int = 256, dim: int = 512, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(inputs, dim)
        self.blocks = nn.Sequential(Block(dim), Block(dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)))


def _set_metadata(text: str) -> None:
    setter = getattr(torch.cuda.memory, "_set_memory_metadata", None)
    if setter is not None:
        setter(text)


def _stamp_modules(model: nn.Module, phase_of: dict[str, str]) -> None:
    """Label allocations with the module running them (a stack, restored on the way out)."""
    stack: list[str] = []

    def label() -> str:
        module = f";module={stack[-1]}" if stack else ""
        return f"memfit:phase={phase_of['phase']}{module}"

    for name, module in model.named_modules():
        if not name:
            continue

        def pre(mod: nn.Module, args: Any, name: str = name) -> None:
            stack.append(name)
            _set_metadata(label() + f";type={type(mod).__name__}")

        def post(mod: nn.Module, args: Any, out: Any) -> None:
            stack.pop()
            _set_metadata(label())

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def _scrub(text: str) -> str:
    """A file path without the machine's folders: relative to the checkout or site-packages."""
    root = str(Path.cwd()) + "/"
    if text.startswith(root):
        return text[len(root) :]
    marker = text.find("/site-packages/")
    if marker >= 0:
        return text[marker + 1 :]
    return text


def _share_strings(value: Any, seen: dict[str, str]) -> Any:
    """The same data with equal strings as one object, so pickle's memo stores each once, and
    file paths scrubbed of the machine's folders."""
    if isinstance(value, str):
        value = _scrub(value) if value.startswith("/") else value
        return seen.setdefault(value, value)
    if isinstance(value, dict):
        return {_share_strings(k, seen): _share_strings(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [_share_strings(v, seen) for v in value]
    if isinstance(value, tuple):
        return tuple(_share_strings(v, seen) for v in value)
    return value


def take_snapshot(*, steps: int, batch: int, metadata: bool) -> tuple[dict[str, Any], dict]:
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    phase = {"phase": "setup"}

    def enter(name: str, extra: str = "") -> None:
        phase["phase"] = name
        if metadata:
            _set_metadata(f"memfit:phase={name}{extra}")

    torch.cuda.memory._record_memory_history(max_entries=100_000, stacks="python")
    try:
        enter("setup", ";category=param")
        model = TinyNet().cuda()
        if metadata:
            _stamp_modules(model, phase)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for _ in range(steps):
            enter("setup", ";category=other")
            x = torch.randn(batch, 256, device="cuda")
            y = torch.randint(0, 10, (batch,), device="cuda")
            enter("forward")
            loss = nn.functional.cross_entropy(model(x), y)
            enter("backward")
            loss.backward()
            enter("optimizer")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del x, y, loss
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(None)
        _set_metadata("")
    counters = {
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
        "max_memory_reserved": torch.cuda.max_memory_reserved(),
        "memory_allocated": torch.cuda.memory_allocated(),
        "memory_reserved": torch.cuda.memory_reserved(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        "steps": steps,
        "batch": batch,
        "metadata": metadata,
    }
    return snapshot, counters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="where to write the snapshot pickle")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--metadata", action="store_true", help="stamp memfit phase/module labels")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA GPU: run this on the GPU machine", file=sys.stderr)
        return 2
    snapshot, counters = take_snapshot(steps=args.steps, batch=args.batch, metadata=args.metadata)
    data = pickle.dumps(_share_strings(snapshot, {}), protocol=4)
    if len(data) > MAX_BYTES:
        print(
            f"snapshot is {len(data):,} bytes (> {MAX_BYTES:,}); use fewer --steps", file=sys.stderr
        )
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(data)
    counters["snapshot_bytes"] = len(data)
    counters["events"] = sum(len(t) for t in snapshot["device_traces"])
    args.out.with_suffix(".json").write_text(json.dumps(counters, indent=2) + "\n")
    print(json.dumps(counters, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
