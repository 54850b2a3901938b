"""The time of FSDP2's collectives (all-gather, reduce-scatter, HSDP's all-reduce) on N GPUs.

A ring collective over ``n`` ranks moves ``(n - 1) / n`` of its buffer through each GPU's link
for an all-gather or a reduce-scatter, twice that for an all-reduce (NCCL's "bus bandwidth"
convention, nccl-tests' PERFORMANCE.md), and takes ``n - 1`` steps of latency each. The link is
NVLink within a node and the GPU's network adapter between nodes: a ring over more ranks than a
node holds runs at the network's rate.

Link rates are the vendors' datasheet figures per direction (NVLink 4 on H100/H200 SXM: 900 GB/s
both ways; NVLink 3 on A100 SXM: 600 GB/s; NVLink 2 on V100 SXM2: 300 GB/s; PCIe 4.0 x16 on the
others: 32 GB/s, PCIe 3.0 x16 on T4: 16 GB/s) and one 400 Gb/s (H100/H200), 200 Gb/s (A100) or
100 Gb/s (others) adapter per GPU between nodes. ``BUS_EFFICIENCY`` is an assumption, not a
measurement: the share of the link rate NCCL's large collectives reach.

How communication overlaps computation: FSDP2 prefetches the next unit's all-gather and
reduce-scatters on their own streams, so the step takes the longer of the two, plus the first
all-gather and the last reduce-scatter that nothing overlaps.

Known limitations:
    * Not calibrated on a multi-GPU machine yet (the 2-GPU benchmark, bench/fsdp2.py, measures
      it); NCCL's tree algorithms and in-network reduction are not modelled.
    * Overlap is all or nothing: a unit whose computation is shorter than its collectives is
      not charged the difference separately.
"""

from __future__ import annotations

from dataclasses import dataclass

from memfit.devices import DeviceSpec

__all__ = [
    "Links",
    "links_of",
    "collective_s",
    "communication_time",
    "CommunicationTime",
    "BUS_EFFICIENCY",
    "offload_s",
]

BUS_EFFICIENCY = 0.8
"""Assumed share of the link rate NCCL's collectives of tens of MB reach (not measured here)."""

LATENCY_S = 5e-6
"""Assumed latency of one ring step."""

_GB = 10**9


@dataclass(frozen=True)
class Links:
    """How the GPUs of a job are connected.

    Attributes:
        intra_node: bytes/s each way between GPUs of one node.
        gpus_per_node: GPUs in one node.
        inter_node: bytes/s each way between a GPU and the other nodes.
    """

    intra_node: float
    gpus_per_node: int
    inter_node: float

    def rate(self, ranks: int, spread: int = 1) -> float:
        """Link rate of a ring over ``ranks`` ranks, ``spread`` apart in rank order."""
        return self.intra_node if ranks * spread <= self.gpus_per_node else self.inter_node


_LINKS = {
    "h100-80gb": Links(450 * _GB, 8, 50 * _GB),
    "h200": Links(450 * _GB, 8, 50 * _GB),
    "a100-80gb": Links(300 * _GB, 8, 25 * _GB),
    "a100-40gb": Links(300 * _GB, 8, 25 * _GB),
    "v100-32gb": Links(150 * _GB, 8, 12.5 * _GB),
    "t4": Links(16 * _GB, 8, 12.5 * _GB),
}
_PCIE4 = Links(32 * _GB, 8, 12.5 * _GB)


def links_of(device: DeviceSpec) -> Links:
    """The usual links of ``device``'s servers (PCIe 4.0 for those not listed)."""
    return _LINKS.get(device.name, _PCIE4)


def collective_s(kind: str, nbytes: int, ranks: int, rate: float) -> float:
    """Seconds of one ring collective over ``ranks`` ranks on a ``rate`` bytes/s link.

    Args:
        kind: ``"all_gather"``, ``"reduce_scatter"`` (``nbytes``: the whole gathered buffer,
            or the whole buffer reduced) or ``"all_reduce"``.
    """
    if ranks < 2:
        return 0.0
    passes = 2 if kind == "all_reduce" else 1
    moved = passes * nbytes * (ranks - 1) / ranks
    return moved / (BUS_EFFICIENCY * rate) + passes * (ranks - 1) * LATENCY_S


@dataclass(frozen=True)
class CommunicationTime:
    """A sharded step's collectives and how much of their time the step shows.

    Attributes:
        total_s: all collectives, one after another.
        exposed_s: what they add to the computation's time (see the module docstring).
    """

    total_s: float
    exposed_s: float


def communication_time(
    collectives: list[tuple[str, int]],
    compute_s: float,
    device: DeviceSpec,
    shards: int,
    replicate: int = 1,
) -> CommunicationTime:
    """The time of a step's collectives, in the order the step ran them.

    Args:
        collectives: ``(kind, bytes)`` of each all-gather and reduce-scatter (whole buffers).
        compute_s: the step's computation time.
        shards: ranks each weight is divided over; ``replicate``: HSDP's groups (their
            gradients are all-reduced across groups, a shard at a time).
    """
    links = links_of(device)
    shard_rate = links.rate(shards)
    times = [collective_s(kind, size, shards, shard_rate) for kind, size in collectives]
    if replicate > 1:  # each reduce-scatter's shard is all-reduced across the groups
        across = links.rate(replicate, spread=shards)
        times += [
            collective_s("all_reduce", size // shards, replicate, across)
            for kind, size in collectives
            if kind == "reduce_scatter"
        ]
    total = sum(times)
    if not collectives:
        return CommunicationTime(0.0, 0.0)
    edges = times[0] + (times[-1] if len(collectives) > 1 else 0.0)
    exposed = max(0.0, total - edges - compute_s) + edges
    return CommunicationTime(total, exposed)


PCIE_BYTES_S = 25 * _GB
"""Assumed host-device copy rate of pinned memory over PCIe 5.0 x16 (not measured here)."""

HOST_BYTES_S = 50 * _GB
"""Assumed host memory bandwidth one rank's optimizer step gets (not measured here)."""


def offload_s(host_bytes: int) -> float:
    """Seconds ``CPUOffloadPolicy`` adds for ``host_bytes`` of shards, gradients and optimizer
    state in host memory: each byte crosses PCIe about once a step (shards to the GPU before
    their all-gathers, gradients back), and the host's optimizer step reads and writes each
    byte once (the step is memory-bound)."""
    return host_bytes / PCIE_BYTES_S + 2 * host_bytes / HOST_BYTES_S
