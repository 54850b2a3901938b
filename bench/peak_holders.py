"""Diagnostic: which tensors are alive at a real step's allocated peak, and which code made them.

For validation-zoo configurations (bench/validation.py's names) on a CUDA GPU: three warm-up
training steps, then one step recorded with ``torch.cuda.memory._record_memory_history``
(Python stacks). The recorded events are replayed to the step's allocated peak; every block
alive there of at least ``--min-mib`` is listed with its size, its stream and the innermost
frames of the code that allocated it. Writes DIR/peak_holders.json. Made for the zoo's misses
that allocation counters cannot explain (Mistral-shaped float32 GQA: 3.9% allocated under).

    python bench/peak_holders.py --out DIR [--only mistral-gqa-fp32,llama-mqa-fp32]
    python bench/peak_holders.py --smoke --out DIR   # a CPU: tiny shapes, no recording
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from validation import clean, select, train_step_of, versions  # noqa: E402
from validation_case import Case  # noqa: E402

MiB = 1 << 20
DEFAULT_ONLY = "mistral-gqa-fp32,llama-mqa-fp32,mistral-gqa-bf16-mixed"
KEEP_FRAMES = 10


def build_step(case: Case, tiny: bool, device: str) -> tuple[Any, Any]:
    """The zoo's training step for ``case``, as bench/validation.py runs it without a recorder."""
    builder, spec = case.built(tiny)
    return train_step_of(case, builder, spec, device)


def frames_of(event: dict) -> list[str]:
    """The innermost Python frames of an event, torch's allocator plumbing dropped."""
    kept = []
    for frame in event.get("frames", []):
        name = frame.get("filename", "")
        if name.endswith(("memory.py", "__init__.py")) and "torch/cuda" in name:
            continue
        if name.startswith("??") or not name:
            continue
        kept.append(f"{name.split('site-packages/')[-1]}:{frame.get('line')} {frame.get('name')}")
        if len(kept) == KEEP_FRAMES:
            break
    return kept


def live_at_peak(events: list[dict], min_bytes: int) -> dict[str, Any]:
    """Replays alloc / free_completed to the allocated peak; the blocks alive there."""
    live: dict[int, dict] = {}
    allocated = peak = 0
    peak_live: dict[int, dict] = {}
    peak_index = -1
    for index, event in enumerate(events):
        action = event["action"]
        if action == "alloc":
            live[event["addr"]] = event
            allocated += event["size"]
            if allocated > peak:
                peak, peak_index = allocated, index
                peak_live = {a: e for a, e in live.items() if e["size"] >= min_bytes}
        elif action == "free_completed" and event["addr"] in live:
            allocated -= live.pop(event["addr"])["size"]
    blocks = sorted(peak_live.values(), key=lambda e: -e["size"])
    return {
        "peak_bytes_in_step": peak,
        "peak_event_index": peak_index,
        "events": len(events),
        "live_at_peak": [
            {"bytes": e["size"], "stream": e.get("stream"), "frames": frames_of(e)} for e in blocks
        ],
        "peak_allocation_frames": frames_of(events[peak_index]) if peak_index >= 0 else [],
    }


def run_case(case: Case, tiny: bool, min_bytes: int) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not tiny
    device = "cuda" if cuda else "cpu"
    started = time.perf_counter()
    step, example = build_step(case, tiny, device)
    for _ in range(3):
        step.step(example)
    if not cuda:
        return {"name": case.name, "smoke": True, "seconds": time.perf_counter() - started}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    step.step(example)
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    events = [e for trace in snapshot["device_traces"] for e in trace]
    row = {
        "name": case.name,
        "allocated_before_step": before,
        "max_allocated": torch.cuda.max_memory_allocated(),
        "max_reserved": torch.cuda.max_memory_reserved(),
        **live_at_peak(events, min_bytes),
        "seconds": time.perf_counter() - started,
    }
    del step, example
    clean()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default=DEFAULT_ONLY)
    parser.add_argument("--min-mib", type=float, default=16.0)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"versions": versions(), "rows": []}
    for case in select("", args.only):
        try:
            row = run_case(case, args.smoke, int(args.min_mib * MiB))
        except Exception as error:  # one failing configuration must not lose the others
            row = {"name": case.name, "error": f"{type(error).__name__}: {error}"[:2000]}
            clean()
        result["rows"].append(row)
        (out / "peak_holders.json").write_text(json.dumps(result, indent=1))
        print(case.name, {k: v for k, v in row.items() if k != "live_at_peak"}, flush=True)


if __name__ == "__main__":
    main()
