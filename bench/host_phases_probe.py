"""The CPU time of each phase of the unmodified training step, on the GPU machine.

python bench/host_phases_probe.py --out DIR [--models a,b] [--steps 10]   ->  DIR/host_phases.json

The step-time model's host side (``Calibration``: per operator of forward, of backward, of the
optimizer, per step, per micro-batch) was fitted on whole steps' host times, where a per-step
cost and a per-operator one look alike, and a step the CPU bounds (the encoder, the Qwen2
shape: 85-99% of the step spent issuing it) is priced by exactly those terms. Here each of
bench/plans.py's models runs its unmodified step (bf16-mixed, fused AdamW, memfit.apply with no
technique) at a **small batch** (one row; language models 128 tokens), where the GPU finishes
each kernel before the CPU issues the next, so the wall time between hooks is the CPU's:

* ``pre``: the step's call up to the model's forward (autocast, the step's own Python);
* ``forward``: the model's forward (forward pre-hook to forward hook);
* ``backward``: from the end of forward to the optimizer's step (the loss and backward);
* ``optimizer``: the optimizer's step (its pre- and post-hooks);
* ``post``: the rest (zero_grad).

The same small batch with micro-batch x2 (two rows) against two rows unmodified gives what a
second micro-batch adds. Each configuration also records its whole step's GPU time (events), so
a reader can check the GPU was not the bound, and the real batch's host and step time
(bench/cost_harness.py's ``measure``) for the host time at full size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from cost_harness import Harness, environment, no_gc  # noqa: E402
from memfit.apply import applied, undo_all  # noqa: E402
from memfit.trace.inputs import make_inputs, parse_input_spec  # noqa: E402
from models import CALIBRATION_LOSS  # noqa: E402
from plans import MODELS, spec_of  # noqa: E402

PHASES = ("pre", "forward", "backward", "optimizer", "post")
TOKENS = 128


def small(batch, rows: int):
    """``rows`` rows of ``batch`` (a tensor or a dict of them); token ids cut to TOKENS."""
    if isinstance(batch, dict):
        return {k: small(v, rows) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(small(v, rows) for v in batch)
    if not isinstance(batch, torch.Tensor) or batch.dim() == 0:
        return batch
    cut = batch[:rows]
    if not cut.is_floating_point() and cut.dim() == 2:
        cut = cut[:, :TOKENS]
    return cut.contiguous()


class PhaseClock:
    """perf_counter marks from hooks on the model's forward and the optimizer's step."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.marks: dict[str, float] = {}
        mark = self.marks.__setitem__
        self.handles = [
            model.register_forward_pre_hook(lambda *_: mark("forward", time.perf_counter())),
            model.register_forward_hook(lambda *_: mark("backward", time.perf_counter())),
            optimizer.register_step_pre_hook(lambda *_: mark("optimizer", time.perf_counter())),
            optimizer.register_step_post_hook(lambda *_: mark("post", time.perf_counter())),
        ]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def phases_of(step, batch, clock: PhaseClock, steps: int, cuda: bool) -> dict:
    """Median seconds of each phase over ``steps`` steps (three warm-up), and the GPU's."""
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        step(batch)
    sync()
    found: dict[str, list[float]] = {phase: [] for phase in (*PHASES, "host", "gpu")}
    with no_gc():
        for _ in range(steps):
            sync()
            if cuda:
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
            clock.marks.clear()
            clock.marks["pre"] = time.perf_counter()
            step(batch)
            done = time.perf_counter()
            if cuda:
                end.record()
                end.synchronize()
                found["gpu"].append(start.elapsed_time(end) / 1e3)
            marks = [clock.marks[p] for p in PHASES] + [done]
            for phase, begin, finish in zip(PHASES, marks, marks[1:], strict=False):
                found[phase].append(finish - begin)
            found["host"].append(done - clock.marks["pre"])
    return {k: statistics.median(v) for k, v in found.items() if v}


def configured(harness: Harness, name: str, rows: int, techniques: list, steps: int) -> dict:
    harness.clean()
    torch.manual_seed(0)
    with torch.device(harness.device):
        model = MODELS[name][0](harness.device == "cpu").train()
    spec = spec_of(name, harness.device == "cpu")
    batch = small(make_inputs(parse_input_spec(spec), device=harness.device), rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=harness.cuda)
    loss_fn, forward = CALIBRATION_LOSS.get(name, (None, None))
    step = memfit.apply(
        techniques, model, optimizer, loss_fn=loss_fn, forward=forward,
        precision="bf16-mixed", device_type=harness.device,
    )  # fmt: skip
    clock = PhaseClock(model, optimizer)
    try:
        return phases_of(step, batch, clock, steps, harness.cuda)
    finally:
        clock.remove()
        if applied(model):
            undo_all(model)
        del step, model, optimizer
        harness.clean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    harness = Harness(device=device)
    result: dict = {"environment": environment(), "tokens": TOKENS, "rows": {}}
    path = args.out / "host_phases.json"
    for name in args.models.split(","):
        started = time.perf_counter()
        row: dict = {}
        for label, rows, techniques in (
            ("one row", 1, []),
            ("two rows", 2, []),
            ("two rows, micro-batch x2", 2, [memfit.MicroBatch(2)]),
        ):
            try:
                row[label] = configured(harness, name, rows, techniques, args.steps)
            except Exception as error:  # recorded: the other configurations still run
                row[label] = {"error": f"{type(error).__name__}: {error}"[:500]}
        row["wall_s"] = round(time.perf_counter() - started, 1)
        result["rows"][name] = row
        path.write_text(json.dumps(result, indent=1))
        one = row["one row"]
        print(name, {k: round(v * 1e3, 2) for k, v in one.items() if isinstance(v, float)})


if __name__ == "__main__":
    main()
