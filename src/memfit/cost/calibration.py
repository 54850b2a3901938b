"""The step-time model's constants: one set per GPU, fitted per operator class.

The defaults were fitted on an H200 (bench/fit_costs.py on bench/results/costs_h200.json);
``memfit calibrate`` rescales the device-side ones for the local GPU and saves them here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from memfit.devices import DeviceSpec

__all__ = ["Calibration", "load_calibration", "save_calibration"]


@dataclass(frozen=True)
class Calibration:
    """Effective rates per operator class, kernel and host overheads.

    Device side (what a kernel takes on the GPU):

    Attributes:
        matmul_efficiency: fraction of the datasheet tensor-core rate large matrix products
            reach (smaller ones lose to wave quantization, ``memfit.cost.device``).
        matmul_tile: output rows and columns one multiprocessor computes per wave (the
            quantization step of small products).
        attention_efficiency: fraction of the tensor-core rate attention forward reaches;
            ``attention_backward_efficiency`` the same for its backward.
        conv_efficiency: the same for convolutions (cuDNN).
        bandwidth_efficiency: fraction of the datasheet bandwidth pointwise kernels, copies
            and fills reach on large tensors.
        reduction_efficiency: the same for reductions, norms, softmax, gathers and scatters.
        optimizer_efficiency: the same for fused and multi-tensor optimizer kernels.
        kernel_s: the least time a kernel takes on the device (launch to completion).

    Host side (what eager PyTorch takes on the CPU to issue an operator; a step is as slow as
    the slower of the CPU issuing and the GPU running, ``memfit.cost.timeline``):

    Attributes:
        host_forward_op_s: per operator of forward (and of recomputation): Python modules,
            the dispatcher, autograd recording.
        host_backward_op_s: per operator the autograd engine runs in backward.
        host_optimizer_op_s: per operator of the optimizer step.
        host_view_op_s: per view, metadata operator or allocation (no kernel), in any phase.
        selective_op_s: what selective checkpointing's dispatch mode adds per operator of its
            regions, in forward and in recomputation (Python per operator).
    """

    matmul_efficiency: float = 0.72
    matmul_tile: int = 128 * 256
    attention_efficiency: float = 0.45
    attention_backward_efficiency: float = 0.35
    conv_efficiency: float = 0.45
    bandwidth_efficiency: float = 0.82
    reduction_efficiency: float = 0.6
    optimizer_efficiency: float = 0.75
    kernel_s: float = 3.5e-6
    host_forward_op_s: float = 9e-6
    host_backward_op_s: float = 5e-6
    host_optimizer_op_s: float = 10e-6
    host_view_op_s: float = 2e-6
    selective_op_s: float = 55e-6
    device: str = ""


def _calibration_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memfit" / "calibration.json"


def load_calibration(device: DeviceSpec) -> Calibration:
    """The calibration ``memfit calibrate`` saved for this device, or the defaults.

    A saved calibration from an older memfit (other fields) keeps the defaults for the
    fields it lacks and drops the ones it no longer has.
    """
    path = _calibration_path()
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get(device.name)
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved:
            known = {f.name for f in fields(Calibration)}
            return Calibration(**{k: v for k, v in saved.items() if k in known})
    return Calibration()


def save_calibration(calibration: Calibration) -> Path:
    path = _calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[calibration.device] = asdict(calibration)
    path.write_text(json.dumps(data, indent=2))
    return path
