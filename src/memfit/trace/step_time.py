"""A traced step's time and host: offloading's busiest resource, FSDP2's collectives, the host.

The tracer's per-operator GPU time is the step's time on one GPU; these add what runs beside it:
the host optimizer and the PCIe copies of offloading (``memfit.offload_cost``), the collectives of
a sharded step (``memfit.collectives``), and the host memory a plan holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from memfit.collectives import BUS_EFFICIENCY, communication_time, offload_s
from memfit.devices import DeviceSpec, HostSpec, get_device, host_spec
from memfit.offload_cost import calibrated_host, offloaded_step_time
from memfit.profile import MemoryProfile
from memfit.trace.session import StepRecord
from memfit.trace.settings import StepSettings
from memfit.units import format_bytes

__all__ = [
    "host_warnings",
    "is_local_device",
    "step_time",
    "target_host",
    "target_host_from",
    "with_communication",
]


def target_host_from(host_memory: str | int | None, device: str | DeviceSpec) -> HostSpec | None:
    """The HostSpec for ``host_memory`` on ``device`` (None when not given)."""
    if host_memory is None:
        return None
    spec = get_device(device)
    return host_spec(host_memory, local=spec.name == "cuda" or is_local_device(spec))


def target_host(settings: StepSettings, spec: DeviceSpec) -> HostSpec:
    """The host the step runs on: the settings', else this machine's when the GPU is local,
    else a reference host with this machine's memory; with ``memfit calibrate``'s Adam rate
    when it is this machine."""
    host = settings.host or host_spec(local=spec.name == "cuda" or is_local_device(spec))
    return calibrated_host(host)


def is_local_device(spec: DeviceSpec) -> bool:
    """Whether ``spec`` is the GPU of this machine."""
    return torch.cuda.is_available() and spec.display_name == torch.cuda.get_device_name()


def step_time(record: StepRecord, spec: DeviceSpec, settings: StepSettings, micro: int) -> float:
    """The traced GPU time, or with offloading the time of the busiest of GPU, host and PCIe."""
    gpu_s = record.step_time_s()
    activations = record.host_bytes.get("offloaded activations", 0)
    if not (record.offloaded_params or activations):
        return gpu_s
    return offloaded_step_time(
        gpu_s=gpu_s,
        forward_s=record.stage_s("forward"),
        backward_s=record.stage_s("backward"),
        offloaded_params=record.offloaded_params,
        first_share=record.first_share,
        activation_bytes=activations,
        micro_batches=micro,
        device=spec,
        host=target_host(settings, spec),
    ).step_s


def host_warnings(host_bytes: dict[str, int], settings: StepSettings) -> tuple[str, ...]:
    held = sum(host_bytes.values())
    if not held:
        return ()
    host = settings.host or host_spec()
    need = held + host.process_bytes
    if need <= host.memory_bytes:
        return ()
    return (
        f"the plan holds {format_bytes(held)} in host memory (+{format_bytes(host.process_bytes)} "
        f"for the process): {format_bytes(need)}, more than the host's "
        f"{format_bytes(host.memory_bytes)}",
    )


def with_communication(
    profile: MemoryProfile, sharded: Any, sharding: Any, spec: DeviceSpec, host_bytes: int
) -> MemoryProfile:
    """The step time with the collectives FSDP2 ran, and a note saying what it assumes;
    ``host_bytes``: what CPU offload keeps in host memory (copied and stepped there)."""
    compute = (profile.step_time_s or 0.0) + offload_s(host_bytes)
    shards = sharding.shards
    collectives = sharded.collective_bytes(shards)
    comm = communication_time(collectives, compute, spec, shards, sharding.replicate)
    note = (
        f"per rank of {sharding.gpus}: {len(sharded.collectives)} all-gathers/reduce-scatters "
        f"take {comm.total_s * 1e3:.1f} ms, {comm.exposed_s * 1e3:.1f} ms of it not overlapped "
        f"with computation (link rates from datasheets, {BUS_EFFICIENCY:.0%} of them assumed: "
        f"not measured)"
    )
    if host_bytes:
        note += (
            f"; CPU offload keeps {host_bytes / 2**30:.2f} GiB in host memory, not counted above "
            f"(its copies and the host optimizer step priced at assumed PCIe and host-memory rates)"
        )
    return dataclasses.replace(
        profile, step_time_s=compute + comm.exposed_s, warnings=(*profile.warnings, note)
    )
