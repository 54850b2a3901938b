"""Timing and profiling of training steps for bench/costs.py, on a GPU or (--smoke) on a CPU."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

GiB = 1024**3


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Python's cyclic collector off while steps are timed, as ``timeit`` does: a collection
    of the planning results a measuring process holds can land in any step (single steps of
    the encoder measured +50% beside their neighbours in plans run 8)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Harness:
    """How steps are timed: CUDA events on a GPU, the wall clock on a CPU (smoke runs)."""

    device: str
    warmup: int = 3
    steps: int = 5

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def clean(self) -> None:
        gc.collect()
        if self.cuda:
            torch._C._cuda_clearCublasWorkspaces()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def seconds(self, fn: Callable[[], Any], repeats: int = 10, warmup: int = 3) -> float:
        """Median seconds of ``fn()`` on the device (events on CUDA)."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats):
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
        return statistics.median(times)

    def measure(self, step: Callable[[Any], Any], batch: Any) -> dict:
        """Median step time, host time to enqueue a step, and the peak memory of the steps."""
        for _ in range(self.warmup):
            step(batch)
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        times, enqueue = [], []
        with no_gc():
            self._timed_steps(step, batch, times, enqueue)
        return {
            "step_s": statistics.median(times),
            "step_s_all": times,
            "host_s": statistics.median(enqueue),  # CPU time to launch a step (sync-free steps)
            "peak_reserved": torch.cuda.max_memory_reserved() if self.cuda else 0,
            "peak_allocated": torch.cuda.max_memory_allocated() if self.cuda else 0,
        }

    def _timed_steps(self, step: Callable[[Any], Any], batch: Any, times: list, enqueue: list):
        for _ in range(self.steps):
            self.sync()
            started = time.perf_counter()
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
            step(batch)
            enqueued = time.perf_counter()
            if self.cuda:
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                times.append(time.perf_counter() - started)
            enqueue.append(enqueued - started)

    def profile(self, step: Callable[[Any], Any], batch: Any, top: int = 40) -> dict:
        """One step under torch.profiler: device and host time per ATen operator, per kernel."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        self.sync()
        with profile(activities=activities) as prof:
            step(batch)
            self.sync()
        ops: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        kernels: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        busy = 0.0
        for event in prof.key_averages():
            device_self = _attr(event, "self_device_time_total", "self_cuda_time_total")
            if event.key.startswith("aten::") or event.key.startswith("memfit::"):
                entry = ops[event.key]
                entry[0] += event.count
                entry[1] += _attr(event, "device_time_total", "cuda_time_total") / 1e6
                entry[2] += event.self_cpu_time_total / 1e6
            elif device_self > 0 and _is_kernel(event):
                kernels[event.key[:120]][0] += event.count
                kernels[event.key[:120]][1] += device_self / 1e6
                busy += device_self / 1e6
        ranked = sorted(kernels.items(), key=lambda item: -item[1][1])
        return {
            "device_busy_s": busy,  # sum of kernel times (idle gaps are launch/host bound)
            "kernels": {k: {"count": int(c), "device_s": s} for k, (c, s) in ranked[:top]},
            "kernels_other_s": sum(s for _, (_, s) in ranked[top:]),
            "ops": {
                k: {"count": int(c), "device_s": d, "host_self_s": h}
                for k, (c, d, h) in sorted(ops.items(), key=lambda item: -item[1][1])
            },
        }


def _attr(event: Any, *names: str) -> float:
    for name in names:
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _is_kernel(event: Any) -> bool:
    kind = str(getattr(event, "device_type", ""))
    return "CUDA" in kind or not (event.key.startswith("aten::") or "Memcpy" in event.key)


def environment() -> dict:
    """The versions and the device a result was measured with."""
    import platform

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "triton", "torchvision", "liger_kernel"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        **versions,
    }
