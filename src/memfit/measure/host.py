"""``memfit calibrate --host``: how fast this machine runs the offloaded optimizer's work.

Two rates the offload cost model (``memfit.offload_cost``) needs: parameters per second of
PyTorch's fused CPU AdamW (``torch._fused_adamw_``, the kernel ``HostOptimizer`` runs) with the
threads it would use, on tensors far larger than the CPU's caches; and, with a GPU, the pinned
host<->device copy rate each way. Measured, they replace the defaults scaled from the H200
host's figures (``memfit.devices.HostSpec``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from memfit.step.host_params import default_threads

__all__ = ["HostRates", "measure_host"]


@dataclass(frozen=True)
class HostRates:
    """What this machine achieved.

    Attributes:
        adam_params_s: fused CPU AdamW, parameters per second.
        threads: the threads it ran with.
        pcie_bytes_s: pinned copy rate each way (the slower of the two), None without a GPU.
    """

    adam_params_s: float
    threads: int
    pcie_bytes_s: float | None


def _median(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _adam_rate(params: int, threads: int) -> float:
    pieces = 8
    size = params // pieces
    tensors = [[torch.rand(size) for _ in range(pieces)] for _ in range(4)]
    masters, grads, exp_avgs, exp_avg_sqs = tensors
    steps = [torch.ones((), dtype=torch.float32) for _ in range(pieces)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seconds = _median(
            lambda: torch._fused_adamw_(
                masters,
                grads,
                exp_avgs,
                exp_avg_sqs,
                [],
                steps,
                lr=1e-4,
                beta1=0.9,
                beta2=0.999,
                weight_decay=0.01,
                eps=1e-8,
                amsgrad=False,
                maximize=False,
            ),  # fmt: skip
            repeats=3,
        )
    finally:
        torch.set_num_threads(before)
    return size * pieces / seconds


def _pcie_rate(nbytes: int) -> float:
    device = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def out() -> None:
        host.copy_(device, non_blocking=True)
        torch.cuda.synchronize()

    def back() -> None:
        device.copy_(host, non_blocking=True)
        torch.cuda.synchronize()

    return nbytes / max(_median(out, 5), _median(back, 5))


def measure_host(
    *, params: int = 1 << 26, threads: int | None = None, progress: Callable[[str], None] = print
) -> HostRates:
    """Time fused CPU AdamW on ``params`` float32 parameters (1 GiB of tensors by default)
    and, when there is a GPU, pinned copies of 256 MiB each way (a few seconds in all)."""
    threads = threads or default_threads()
    progress(f"fused CPU AdamW, {threads} threads")
    rate = _adam_rate(params, threads)
    pcie = None
    if torch.cuda.is_available():
        progress("pinned host<->device copies")
        pcie = _pcie_rate(256 * 2**20)
    return HostRates(adam_params_s=rate, threads=threads, pcie_bytes_s=pcie)
