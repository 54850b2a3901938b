"""The time of a step whose optimizer runs on the host: GPU, CPU and PCIe, overlapped.

``OffloadOptimizer`` moves each gradient to the host as backward produces it, the CPU updates
the float32 master while backward goes on, and the new weights go back before the next forward
uses them; ``OffloadActivations`` moves checkpoint boundaries out in forward and back in
backward. Three resources work at once, so the step takes as long as the busiest one, plus what
cannot overlap:

* the GPU: its traced compute (``gpu_s``), plus the chain that starts when backward ends: the
  first layer's gradient to the host, its update, its weights back (the next forward needs it
  first and backward produces it last);
* the CPU: ``N / rate`` for ``N`` offloaded parameters (PyTorch's fused CPU AdamW is bound by
  host memory bandwidth; ``rate`` is ``HostSpec.adam_params_s``), the accumulation of earlier
  micro-batches' gradients (12 of the update's 28 bytes per parameter), and the time it waits
  each step for the first gradient: the last layer's forward and backward;
* PCIe, each way: float32 gradients and activations out, float32 masters and activations in.

Sources: ZeRO-Offload (Ren et al. 2021) overlaps the CPU step with backward the same way; the
rates are ``DeviceSpec.pcie_bytes_s`` and ``HostSpec.adam_params_s``, measured on an H200 host
(bench/results/northstar_probe_h200.json).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from memfit.devices import DeviceSpec, HostSpec

__all__ = [
    "OffloadTime",
    "offloaded_step_time",
    "HOST_CONTENTION",
    "calibrated_host",
    "save_host_calibration",
]

_ADAM_BYTES, _ACCUMULATE_BYTES = 28, 12  # per parameter: read p, g, m, v, write p, m, v; g += g'

HOST_CONTENTION = 1.0
"""How much slower the host step runs beside the training step than alone (kernel launches,
autograd's thread and the DMA engines share the CPU and its memory). 1.0: not measured yet.
Run 1 and 2 on the H200 (bench/results/northstar_h200_run{1,2}.json) looked like a factor of 2,
but their worker waited for the newest gradient while older ones were on the host (fixed in
``host_worker``), so their host time was mostly waiting; the next run measures the Adam
kernel's own time beside training (``host_adam_per_step_s``)."""


@dataclass(frozen=True)
class OffloadTime:
    """A step's time with offloading, and what bounds it.

    Attributes:
        step_s: the predicted step time.
        gpu_s, host_s, pcie_s: each resource's busy time per step, with what it must wait.
        bound: ``"gpu"``, ``"host"`` or ``"pcie"``: the resource that sets ``step_s``.
    """

    step_s: float
    gpu_s: float
    host_s: float
    pcie_s: float
    bound: str


def offloaded_step_time(
    *,
    gpu_s: float,
    forward_s: float,
    backward_s: float,
    offloaded_params: int,
    first_share: float,
    activation_bytes: int,
    micro_batches: int,
    device: DeviceSpec,
    host: HostSpec,
    contention: float = HOST_CONTENTION,
) -> OffloadTime:
    """The step time of an offloaded plan from its traced GPU time.

    Args:
        gpu_s: the traced step's GPU time (forward, backward, the GPU's optimizer step).
        forward_s, backward_s: its forward and backward parts (all micro-batches).
        offloaded_params: parameters the host updates (``N``).
        first_share: the share of ``N`` the next forward needs first (its first block's).
        activation_bytes: bytes of activations offloaded per micro-batch.
        micro_batches: backward passes per step.
        device, host: the GPU (its PCIe rate) and the host (its Adam rate).
        contention: the host step's slowdown beside training (``HOST_CONTENTION``).
    """
    n, pcie = offloaded_params, device.pcie_bytes_s
    rate = host.adam_params_s / contention
    update_s = n / rate
    accumulate_s = (micro_batches - 1) * n * _ACCUMULATE_BYTES / (_ADAM_BYTES * rate)
    grads_out_s = micro_batches * 4 * n / pcie
    weights_in_s = 4 * n / pcie
    acts_s = micro_batches * activation_bytes / pcie
    chain_s = first_share * (update_s + 8 * n / pcie)
    last_layer_s = first_share * (forward_s + backward_s) / micro_batches
    gpu_bound = gpu_s + chain_s if n else gpu_s
    host_bound = update_s + accumulate_s + last_layer_s + chain_s if n else 0.0
    pcie_bound = max(grads_out_s + acts_s, weights_in_s + acts_s)
    bounds = {"gpu": gpu_bound, "host": host_bound, "pcie": pcie_bound}
    bound = max(bounds, key=lambda k: bounds[k])
    return OffloadTime(bounds[bound], gpu_bound, host_bound, pcie_bound, bound)


def _path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memfit" / "host_calibration.json"


def calibrated_host(host: HostSpec) -> HostSpec:
    """``host`` with the Adam rate ``memfit calibrate`` measured here, when it is this machine
    (``host.name == "local"``) and was calibrated; otherwise ``host`` as it is."""
    path = _path()
    if host.name != "local" or not path.is_file():
        return host
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return host
    rate = saved.get("adam_params_s")
    if not isinstance(rate, (int, float)) or rate <= 0:
        return host
    return HostSpec(
        memory_bytes=host.memory_bytes,
        cores=host.cores,
        adam_params_s=float(rate),
        process_bytes=host.process_bytes,
        name="calibrated",
    )


def save_host_calibration(adam_params_s: float, pcie_bytes_s: float | None) -> Path:
    """Keep this machine's measured Adam rate (and pinned copy rate, if it has a GPU)."""
    path = _path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"adam_params_s": adam_params_s, "pcie_bytes_s": pcie_bytes_s}
    path.write_text(json.dumps(data, indent=2))
    return path
