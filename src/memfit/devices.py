"""Target GPUs: memory, bandwidth, arithmetic rates and the architecture that decides kernels.

Figures are the vendors' datasheet values (dense, no sparsity) and the total memory that
``torch.cuda.get_device_properties(i).total_memory`` reports on each card. They are leads for the
cost model, not measurements; ``memfit calibrate`` (plan issue) refines rates on a local GPU.

Sources: NVIDIA H100 and H200 Tensor Core GPU datasheets (SXM), A100 datasheet (SXM), L40S, L4,
RTX 4090 / 3090 (Ada / Ampere GA102 whitepapers), T4, V100 (SXM2 32 GB) datasheets.

Host-to-device copies: ``pcie_bytes_s`` is what a pinned copy achieves each way, not the link's
nominal rate: 55 GB/s measured on an H200 (PCIe 5.0 x16, bench/results/northstar_probe_h200.json,
96 GB/s both ways at once); PCIe 4.0 x16 cards are taken at half that, PCIe 3.0 at a quarter.

``HostSpec`` is the machine around the GPU: its memory, cores and how fast its CPU runs Adam.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from memfit.errors import DeviceError, InvalidInputError
from memfit.units import GiB, MiB, format_bytes, parse_bytes

__all__ = [
    "DeviceSpec",
    "DEVICES",
    "DEFAULT_DEVICE",
    "get_device",
    "local_device",
    "device_names",
    "HostSpec",
    "local_host",
    "host_spec",
]

_TERA = 10**12
_GIGA = 10**9


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSpec:
    """One GPU model as the memory and cost models see it.

    Attributes:
        name: the key users pass (``--device h100-80gb``).
        memory_bytes: total device memory, as PyTorch reports it.
        bandwidth_bytes_s: DRAM bandwidth.
        bf16_flops: dense bf16/fp16 tensor-core rate (fp32 accumulate); 0 where bf16 is emulated.
        fp16_flops: dense fp16 tensor-core rate.
        tf32_flops: dense tf32 tensor-core rate; 0 where there is none.
        fp32_flops: plain fp32 (CUDA core) rate.
        sm: compute capability (major, minor): decides SDPA kernels and cuBLAS workspace size.
        num_sms: streaming multiprocessors; with ``max_threads_per_sm`` it sizes the grids of
            PyTorch's reduction kernels, and so their scratch buffers.
        max_threads_per_sm: resident threads per multiprocessor (CUDA occupancy tables).
        cuda_context_bytes: memory the CUDA context and kernel images hold outside PyTorch's
            allocator (measured on an H200: bench/results/accuracy_h200.json).
        pcie_bytes_s: pinned host<->device copy rate, each way.
    """

    name: str
    display_name: str
    memory_bytes: int
    bandwidth_bytes_s: float
    bf16_flops: float
    fp16_flops: float
    tf32_flops: float
    fp32_flops: float
    sm: tuple[int, int]
    num_sms: int = 132
    max_threads_per_sm: int = 2048
    cuda_context_bytes: int = 520 * MiB
    pcie_bytes_s: float = 25 * _GIGA

    @property
    def arch(self) -> str:
        return f"sm_{self.sm[0]}{self.sm[1]}"

    @property
    def supports_bf16(self) -> bool:
        return self.sm >= (8, 0)


def _spec(
    name: str,
    display: str,
    mib: int,
    gb_s: float,
    bf16: float,
    fp16: float,
    tf32: float,
    fp32: float,
    sm: tuple[int, int],
    num_sms: int,
    pcie_gb_s: float = 27.5,
) -> DeviceSpec:
    return DeviceSpec(
        name=name,
        display_name=display,
        memory_bytes=mib * MiB,
        bandwidth_bytes_s=gb_s * _GIGA,
        bf16_flops=bf16 * _TERA,
        fp16_flops=fp16 * _TERA,
        tf32_flops=tf32 * _TERA,
        fp32_flops=fp32 * _TERA,
        sm=sm,
        num_sms=num_sms,
        max_threads_per_sm={(7, 5): 1024, (8, 6): 1536, (8, 9): 1536}.get(sm, 2048),
        pcie_bytes_s=pcie_gb_s * _GIGA,
    )


# name, display name, memory (MiB, as torch reports), GB/s, bf16, fp16, tf32, fp32 TFLOP/s, SM,
# multiprocessors, pinned copy GB/s each way (PCIe 5.0: 55, 4.0: 27.5, 3.0: 13.75)
DEVICES: dict[str, DeviceSpec] = {
    d.name: d
    for d in (
        _spec(
            "h100-80gb",
            "NVIDIA H100 80GB HBM3 (SXM)",
            81_079,
            3350,
            989,
            989,
            495,
            67,
            (9, 0),
            132,
            55,
        ),
        _spec(
            "h200",
            "NVIDIA H200 (SXM, 141 GB)",
            143_771,
            4800,
            989,
            989,
            495,
            67,
            (9, 0),
            132,
            55,
        ),
        _spec("a100-80gb", "NVIDIA A100-SXM4-80GB", 81_251, 2039, 312, 312, 156, 19.5, (8, 0), 108),
        _spec("a100-40gb", "NVIDIA A100-SXM4-40GB", 40_537, 1555, 312, 312, 156, 19.5, (8, 0), 108),
        _spec("l40s", "NVIDIA L40S", 45_596, 864, 362, 362, 183, 91.6, (8, 9), 142),
        _spec("l4", "NVIDIA L4", 22_478, 300, 121, 121, 60, 30.3, (8, 9), 58),
        _spec(
            "rtx4090", "NVIDIA GeForce RTX 4090", 24_210, 1008, 165, 165, 82.6, 82.6, (8, 9), 128
        ),
        _spec("rtx3090", "NVIDIA GeForce RTX 3090", 24_253, 936, 71, 71, 35.6, 35.6, (8, 6), 82),
        _spec("t4", "Tesla T4", 14_931, 320, 0, 65, 0, 8.1, (7, 5), 40, 13.75),
        _spec("v100-32gb", "Tesla V100-SXM2-32GB", 32_494, 900, 0, 125, 0, 15.7, (7, 0), 80, 13.75),
    )
}

DEFAULT_DEVICE = "h100-80gb"
"""The device predictions are for when none is named."""

_ALIASES = {
    "h100": "h100-80gb",
    "h100-sxm": "h100-80gb",
    "h200-141gb": "h200",
    "a100": "a100-80gb",
    "4090": "rtx4090",
    "rtx-4090": "rtx4090",
    "3090": "rtx3090",
    "rtx-3090": "rtx3090",
    "v100": "v100-32gb",
}


def device_names() -> list[str]:
    return list(DEVICES)


def get_device(name: str | DeviceSpec) -> DeviceSpec:
    """Look up a device by name (``"h100-80gb"``), or ``"cuda"`` for the local GPU.

    Raises:
        DeviceError: for an unknown name, with the list of known ones.
    """
    if isinstance(name, DeviceSpec):
        return name
    if not isinstance(name, str):
        raise DeviceError(f"device {name!r} must be a name such as 'h100-80gb' or 'cuda'")
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key == "cuda" or key.startswith("cuda:"):
        return local_device(int(key.split(":")[1]) if ":" in key else 0)
    key = _ALIASES.get(key, key)
    if key in DEVICES:
        return DEVICES[key]
    raise DeviceError(
        f"unknown device {name!r}; known devices: {', '.join(DEVICES)} (or 'cuda' for the local "
        f"GPU). Run `memfit devices` for their figures."
    )


def local_device(index: int = 0) -> DeviceSpec:
    """The local GPU as a DeviceSpec: the table's rates for a known model, its real memory size.

    Raises:
        DeviceError: when there is no CUDA GPU.
    """
    import torch  # not at the top: the device table is read without torch

    if not torch.cuda.is_available():
        raise DeviceError(
            "device 'cuda' asks for the local GPU, but torch sees none; name a target instead, "
            "e.g. --device h100-80gb (see `memfit devices`)"
        )
    props = torch.cuda.get_device_properties(index)
    known = _match_name(props.name)
    if known is not None:
        return replace(
            known,
            memory_bytes=int(props.total_memory),
            display_name=props.name,
            num_sms=props.multi_processor_count,
            max_threads_per_sm=props.max_threads_per_multi_processor,
        )
    return DeviceSpec(
        name="cuda",
        display_name=props.name,
        memory_bytes=int(props.total_memory),
        bandwidth_bytes_s=1e12,
        bf16_flops=100 * _TERA if (props.major, props.minor) >= (8, 0) else 0.0,
        fp16_flops=100 * _TERA,
        tf32_flops=50 * _TERA if (props.major, props.minor) >= (8, 0) else 0.0,
        fp32_flops=20 * _TERA,
        sm=(props.major, props.minor),
        num_sms=props.multi_processor_count,
        max_threads_per_sm=props.max_threads_per_multi_processor,
    )


def _match_name(gpu_name: str) -> DeviceSpec | None:
    lowered = gpu_name.lower()
    for pattern, key in (
        (r"h200", "h200"),
        (r"h100", "h100-80gb"),
        (r"a100.*40", "a100-40gb"),
        (r"a100", "a100-80gb"),
        (r"l40s", "l40s"),
        (r"\bl4\b", "l4"),
        (r"4090", "rtx4090"),
        (r"3090", "rtx3090"),
        (r"t4\b", "t4"),
        (r"v100", "v100-32gb"),
    ):
        if re.search(pattern, lowered):
            return DEVICES[key]
    return None


# Fused CPU AdamW (torch._fused_adamw_, float32) on the H200's host: 3.85e9 parameters/s with 15
# threads, 2.73e9 with 8 (16 cores; bench/results/northstar_probe_h200.json). Below the
# memory-bound plateau a thread updates about 0.34e9 parameters/s.
_ADAM_PER_THREAD = 0.34e9
_ADAM_PLATEAU = 3.85e9
REFERENCE_CORES = 16
"""Cores assumed for a target host that is not this machine (the H200 benchmark host's)."""
PROCESS_BYTES = 4 * GiB
"""Host memory of the training process before any offload: Python, torch, CUDA's libraries and
the model's data (3.6 GiB resident in the H200 benchmark process, bench/results)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """The machine around the GPU, as the offload techniques see it.

    Attributes:
        memory_bytes: its RAM.
        cores: CPU cores the training process may use.
        adam_params_s: parameters per second of PyTorch's fused CPU Adam/AdamW with all cores
            but two (``memfit calibrate`` measures it; the default scales the H200 host's
            measured rate by cores, capped at its memory-bound plateau).
        process_bytes: host memory the training process holds besides what memfit offloads.
        name: where the figures come from: ``"local"`` (this machine), ``"given"`` (by the
            caller), ``"reference"`` (this machine's memory, ``REFERENCE_CORES`` cores: the GPU
            is not this machine's), ``"calibrated"``.
    """

    memory_bytes: int
    cores: int
    adam_params_s: float
    process_bytes: int = PROCESS_BYTES
    name: str = "local"

    def describe(self) -> str:
        return (
            f"{format_bytes(self.memory_bytes)} RAM, {self.cores} cores, Adam "
            f"{self.adam_params_s / 1e9:.2g}e9 params/s"
        )


def _default_adam_rate(cores: int) -> float:
    return min(_ADAM_PLATEAU, _ADAM_PER_THREAD * max(1, cores - 2))


def local_host() -> HostSpec:
    """This machine: its RAM (``sysconf``) and the cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a workstation
        memory = 64 * GiB
    return HostSpec(memory_bytes=int(memory), cores=cores, adam_params_s=_default_adam_rate(cores))


def host_spec(
    memory: str | int | float | None = None,
    *,
    cores: int | None = None,
    adam_params_s: float | None = None,
    local: bool = True,
) -> HostSpec:
    """The target host: this machine's figures unless given.

    Args:
        memory: its RAM (``"128GiB"``, bytes); default this machine's.
        cores: its CPU cores; default this machine's when ``local`` (the GPU is this
            machine's), else ``REFERENCE_CORES``.
        adam_params_s: its fused CPU Adam rate; default scaled from the cores (``memfit
            calibrate`` measures this machine's: ``memfit.offload_cost.calibrated_host``).

    Raises:
        InvalidInputError: a malformed size or a count below one.
    """
    here = local_host()
    if cores is not None and (isinstance(cores, bool) or not isinstance(cores, int) or cores < 1):
        raise InvalidInputError(f"host cores={cores!r} must be a positive integer")
    if adam_params_s is not None and not adam_params_s > 0:
        raise InvalidInputError(f"host adam_params_s={adam_params_s!r} must be positive")
    size = here.memory_bytes if memory is None else parse_bytes(memory, what="host memory")
    if size <= 0:
        raise InvalidInputError(f"host memory {memory!r} must be positive, e.g. '128GiB'")
    count = cores or (here.cores if local else REFERENCE_CORES)
    rate = adam_params_s or _default_adam_rate(count)
    given = memory is not None or cores is not None or adam_params_s is not None
    name = "given" if given else ("local" if local else "reference")
    return HostSpec(memory_bytes=size, cores=count, adam_params_s=rate, name=name)
