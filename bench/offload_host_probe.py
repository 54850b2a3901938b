"""Where offloaded checkpoint boundaries spend their time: pinned copy rates, and the host time
inside the offloader's hooks during a step.

python bench/offload_host_probe.py --out DIR [--smoke]   ->  DIR/offload_host_probe.json

The ladder probe on an H100 (bench/results/ladder_probe_h100.json) measured boundaries to host
adding 2.7-11.8 ms to the 6-layer encoder's checkpointed steps and 3.9-14.3 ms to ResNet-50's,
where the step-time model (GPU, host and PCIe overlapped over the whole step) predicted nothing;
the encoder's host (enqueue) time grew by as much as its step time. This probe measures (1) the
pinned copy rate each way for buffers page-locked in place as the offloader does
(``memfit.step.pinned``), and (2) for one plan per model, with and without the boundaries
offloaded, the step time and the host seconds per step inside each of the offloader's methods
(``settle`` waits in forward for copies two modules back; ``reached`` starts the copies back in
backward; ``get`` makes the compute stream wait for them), and the same with forward's waits
sleeping (``cudaEventBlockingSync``, the offloader's default before this probe) instead of
spinning. The hooks' times per step include the two warm-up steps, whose first page-locks the
host buffers (``cudaHostRegister``): they are not steady-state figures.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from cost_harness import Harness, environment  # noqa: E402
from memfit.apply import applied, undo_all  # noqa: E402
from memfit.step import host_activations  # noqa: E402
from memfit.step.pinned import PinnedHost  # noqa: E402
from memfit.structure.blocks import find_blocks  # noqa: E402
from plans import applied_step, build, measure  # noqa: E402

PLANS = {"transformer-encoder": 6, "tv-resnet50": 8}  # checkpointed blocks, as in the ladder
TIMED = {"ActivationOffloader": ("enter", "leave", "pack", "reached"), "_Saved": ("settle", "get")}


def copy_rates(sizes: tuple[int, ...], repeats: int = 5) -> list[dict]:
    """Pinned (registered in place) copy rates each way, GB/s, median of ``repeats``."""
    rows = []
    pinned = PinnedHost()
    for nbytes in sizes:
        host = torch.empty(nbytes, dtype=torch.uint8)
        pinned.pin(host)
        device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        row: dict = {"bytes": nbytes}
        for direction, (dst, src) in {"to_host": (host, device), "to_gpu": (device, host)}.items():
            seconds = []
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                dst.copy_(src, non_blocking=True)
                end.record()
                end.synchronize()
                seconds.append(start.elapsed_time(end) / 1e3)
            row[f"{direction}_gb_s"] = nbytes / statistics.median(seconds) / 1e9
        rows.append(row)
        del device
    pinned.release()
    return rows


class HookClock:
    """Host seconds spent inside the offloader's methods, summed by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._saved: list[tuple[type, str, object]] = []

    def __enter__(self) -> HookClock:
        for cls_name, methods in TIMED.items():
            cls = getattr(host_activations, cls_name)
            for method in methods:
                original = getattr(cls, method)
                self._saved.append((cls, method, original))
                setattr(cls, method, self._timed(f"{cls_name}.{method}", original))
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, method, original in self._saved:
            setattr(cls, method, original)

    def _timed(self, name: str, original):
        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.calls[name] += 1

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny models on the CPU")
    parser.add_argument("--models", default=",".join(PLANS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and not args.smoke
    harness = Harness("cuda" if cuda else "cpu", warmup=2, steps=1 if args.smoke else 6)
    result: dict = {"environment": environment(), "smoke": args.smoke, "rows": []}
    if cuda:
        result["copy_rates"] = copy_rates((32 << 20, 256 << 20))
        print(result["copy_rates"], flush=True)
    for name, k in PLANS.items():
        if name not in args.models.split(","):
            continue
        model, _ = build(name, "meta", not cuda)
        blocks = tuple(find_blocks(model)[:k])
        checkpointed = [memfit.Checkpoint(modules=blocks)]
        configs = {
            "unmodified": [],
            f"full ckpt x{len(blocks)}": checkpointed,
            f"full ckpt x{len(blocks)}, boundaries to host": [
                *checkpointed,
                memfit.OffloadActivations(modules=blocks),
            ],
        }
        configs[f"full ckpt x{len(blocks)}, boundaries to host, sleeping"] = configs[
            f"full ckpt x{len(blocks)}, boundaries to host"
        ]
        for label, plan in configs.items():
            # the last configuration: forward's waits for copies sleep instead of spinning
            host_activations._SLEEP_WHILE_WAITING = label.endswith("sleeping")
            with HookClock() as clock:
                measured = measure(harness, name, plan)
            steps = harness.warmup + harness.steps
            row = {
                "model": name,
                "plan": label,
                "measured": measured,
                "hook_host_s_per_step": {n: s / steps for n, s in clock.seconds.items()},
                "hook_calls_per_step": {n: c / steps for n, c in clock.calls.items()},
            }
            if cuda:
                row["profile"] = profiled(harness, name, plan)
            result["rows"].append(row)
            hooks = row["hook_host_s_per_step"].items()
            print(
                f"{name} | {label}: {measured['step_s'] * 1e3:.1f} ms "
                f"(host {measured['host_s'] * 1e3:.1f}); {row.get('profile')}; hooks "
                + ", ".join(f"{n} {s * 1e3:.2f} ms" for n, s in hooks),
                flush=True,
            )
            (args.out / "offload_host_probe.json").write_text(json.dumps(result, indent=1))


def profiled(harness: Harness, name: str, plan: list) -> dict:
    """One step (after two warm-ups) under the profiler: the GPU's kernel time and its copy
    time each way, summed (a step the CPU bounds leaves the rest of its time idle)."""
    from torch.profiler import ProfilerActivity, profile

    harness.clean()
    step, batch, model = applied_step(harness, name, plan)
    try:
        for _ in range(2):
            step(batch)
        harness.sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(batch)
            harness.sync()
        sums = {"kernels_s": 0.0, "to_host_s": 0.0, "to_gpu_s": 0.0}
        for event in prof.key_averages():
            device_s = getattr(event, "self_device_time_total", 0) / 1e6
            if "DtoH" in event.key:
                sums["to_host_s"] += device_s
            elif "HtoD" in event.key:
                sums["to_gpu_s"] += device_s
            elif device_s > 0 and not event.key.startswith(
                ("aten::", "memfit::", "Memcpy", "Memset")
            ):
                sums["kernels_s"] += device_s
        return sums
    finally:
        if applied(model):
            undo_all(model)
        del step, model, batch
        harness.clean()


if __name__ == "__main__":
    main()
