"""``memfit calibrate``: fit the cost model's constants to the local GPU.

The default ``Calibration`` was fitted per operator class to measured step times on an H200
(``memfit.cost``); those constants hold what whole eager steps achieve, which microbenchmarks
alone do not give. So calibration is relative: three microbenchmarks (a large bf16 matrix
product, a large copy, a chain of one-element kernels) are timed on the local GPU and compared
with the same microbenchmarks on that H200, each as a fraction of its own datasheet rate. A GPU
whose matrix products reach 70% of its datasheet rate where the H200's reached 80% gets 0.875
times the default efficiency of products, attention and convolutions; the memory-bound classes
scale with the copy's bandwidth, and the kernel and host overheads with the time per kernel of
the chain (which the host's dispatch bounds).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from memfit.cost import Calibration
from memfit.devices import DeviceSpec, get_device, local_device
from memfit.errors import DeviceError

__all__ = [
    "Microbenchmarks",
    "REFERENCE",
    "SCALED_BY",
    "SHAPES",
    "calibrate",
    "calibration_from",
    "event_seconds",
    "run_microbenchmarks",
]


@dataclass(frozen=True)
class Microbenchmarks:
    """What the local GPU achieved.

    Attributes:
        matmul_flops: FLOP/s of a bf16 matrix product (8192 x 8192 x 8192; fp16 on GPUs
            without bf16).
        copy_bytes_s: bytes read plus written per second by a 1 GiB device-to-device copy.
        kernel_s: seconds per launch in a chain of tiny elementwise kernels.
        device: the DeviceSpec name these were measured on.
    """

    matmul_flops: float
    copy_bytes_s: float
    kernel_s: float
    device: str

    def fractions(self, spec: DeviceSpec) -> tuple[float, float]:
        """(matmul, bandwidth) achieved as fractions of the datasheet rates."""
        rate = spec.bf16_flops or spec.fp16_flops
        return self.matmul_flops / rate, self.copy_bytes_s / spec.bandwidth_bytes_s


# Medians of three runs of bench/calibrate_reference.py on the H200 the defaults were fitted on
# (torch 2.11+cu130; bench/results/calibrate_h200.json): 79% of the datasheet bf16 rate, 88% of
# the datasheet bandwidth.
REFERENCE = Microbenchmarks(
    matmul_flops=776.85e12,
    copy_bytes_s=4.2031e12,
    kernel_s=6.601e-6,
    device="h200",
)

DEFAULTS = Calibration()

# What each constant of Calibration scales with: the local GPU's matrix-product rate, its
# bandwidth, or the time per kernel of a chain (which the host's dispatch bounds: every host
# constant, Python per operator, per step or per region, scales with it). The two constants
# left out describe shapes (matmul_tile, unaligned_matmul_factor), not speed.
SCALED_BY = {
    "matmul_efficiency": "compute",
    "attention_efficiency": "compute",
    "attention_backward_efficiency": "compute",
    "conv_efficiency": "compute",
    "bandwidth_efficiency": "bandwidth",
    "copy_efficiency": "bandwidth",
    "reduction_efficiency": "bandwidth",
    "norm_efficiency": "bandwidth",
    "batch_norm_efficiency": "bandwidth",
    "optimizer_efficiency": "bandwidth",
    "kernel_s": "host",
    "host_forward_op_s": "host",
    "host_backward_op_s": "host",
    "host_optimizer_op_s": "host",
    "optimizer_step_s": "host",
    "host_view_op_s": "host",
    "host_tensor_s": "host",
    "forward_backward_s": "host",
    "module_call_s": "host",
    "checkpoint_region_s": "host",
    "checkpoint_op_s": "host",
    "selective_op_s": "host",
    "recompute_op_s": "host",
    "offload_tensor_s": "host",
    "lean_tensor_s": "host",
    "lean_recipe_s": "host",
}
SHAPES = ("matmul_tile", "unaligned_matmul_factor")


def calibration_from(
    measured: Microbenchmarks,
    spec: DeviceSpec,
    *,
    reference: Microbenchmarks = REFERENCE,
    reference_spec: DeviceSpec | None = None,
    defaults: Calibration = DEFAULTS,
) -> Calibration:
    """The defaults scaled by how the local GPU compares with the reference H200."""
    reference_spec = reference_spec or get_device(reference.device)
    mm, bw = measured.fractions(spec)
    ref_mm, ref_bw = reference.fractions(reference_spec)
    scale = {
        "compute": mm / ref_mm,
        "bandwidth": bw / ref_bw,
        "host": measured.kernel_s / reference.kernel_s,  # a chain of tiny kernels: host-bound
    }
    scaled = {name: getattr(defaults, name) * scale[kind] for name, kind in SCALED_BY.items()}
    return replace(defaults, **scaled, device=spec.name)


def event_seconds(fn: Callable[[], object]) -> float:
    """The seconds of one call of ``fn`` on the current CUDA stream, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    return statistics.median(event_seconds(fn) for _ in range(repeats))


def _matmul_seconds(n: int, dtype: torch.dtype) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return _median_seconds(lambda: torch.mm(a, b), repeats=20)


def _copy_seconds(nbytes: int) -> float:
    source = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    return _median_seconds(lambda: target.copy_(source), repeats=20)


def _kernel_seconds(chain: int) -> float:
    x = torch.zeros(1, device="cuda")

    def launches() -> None:
        for _ in range(chain):
            x.add_(1)

    return _median_seconds(launches, repeats=5) / chain


def run_microbenchmarks(
    spec: DeviceSpec, *, progress: Callable[[str], None] = print
) -> Microbenchmarks:
    """Time the three microbenchmarks on the current CUDA device (a few seconds)."""
    n = 8192
    dtype = torch.bfloat16 if spec.bf16_flops else torch.float16
    progress(f"{str(dtype).removeprefix('torch.')} matrix product")
    matmul_s = _matmul_seconds(n, dtype)
    progress("1 GiB copy")
    copy_s = _copy_seconds(2**30)
    progress("kernel launches")
    kernel_s = _kernel_seconds(1000)
    torch.cuda.empty_cache()
    return Microbenchmarks(
        matmul_flops=2 * n**3 / matmul_s,
        copy_bytes_s=2 * 2**30 / copy_s,
        kernel_s=kernel_s,
        device=spec.name,
    )


def calibrate(*, progress: Callable[[str], None] = print) -> tuple[Microbenchmarks, Calibration]:
    """Measure the local GPU and return its microbenchmarks and the calibration they give.

    Raises:
        DeviceError: no CUDA GPU here.
    """
    if not torch.cuda.is_available():
        raise DeviceError(
            "memfit calibrate times the local GPU, but torch sees none "
            "(torch.cuda.is_available() is False); run it on the machine with the GPU. Without "
            "a calibration, plans use the defaults fitted on an H200"
        )
    spec = local_device()
    measured = run_microbenchmarks(spec, progress=progress)
    return measured, calibration_from(measured, spec)
