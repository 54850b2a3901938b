"""Predicted step time: each operator priced by its class, the CPU and GPU overlapped.

``op_time`` prices one ATen operator of a traced step: its class and work
(``memfit.cost.classes``: FLOPs of products, attention and convolutions; bytes moved by the
rest, counted as each class's kernels move them), its GPU time (``memfit.cost.device``: a
roofline per class, with the wave quantization of small products and a least time per
kernel) and its CPU time (eager PyTorch's dispatch, by phase, plus what a technique's Python
noted, ``memfit.step.overhead``). ``overlapped_seconds`` (``memfit.cost.timeline``) turns a
step's operators into its time, the CPU issuing ahead of the GPU. Recomputation
(checkpointing) is priced as the operators it runs again, issued by Python as forward's are.
The constants are per GPU (``Calibration``), fitted on an H200 and rescaled by
``memfit calibrate``.

Adding a cost (host-device transfers, say): a class in ``classes.py`` (or a new module for
work that is not an ATen operator), its rule in ``device.py`` and its constants in
``Calibration``.

Known limitations:
    * Kernel fusion (torch.compile) and overlap of kernels on several streams are not modelled.
    * cuBLAS's choice of tiles and of split-K is approximated by one tile size and a rule.
    * Host time is an average per operator and phase; Python code between operators (a
      model's own) is not seen.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from memfit.cost.calibration import Calibration, load_calibration, save_calibration
from memfit.cost.classes import OpWork, op_work
from memfit.cost.device import device_seconds, host_seconds, tensor_rate
from memfit.cost.timeline import overlapped_seconds
from memfit.devices import DeviceSpec

__all__ = [
    "Calibration",
    "OpTime",
    "OpWork",
    "op_time",
    "load_calibration",
    "save_calibration",
    "overlapped_seconds",
]


@dataclass(frozen=True, slots=True)
class OpTime:
    """One operator's predicted cost.

    Attributes:
        seconds: its GPU time.
        host_s: the CPU time to issue it (before what a technique charges).
    """

    op: str
    kind: str
    flops: float
    bytes: int
    seconds: float
    host_s: float
    rate: float = 0.0  # the tensor-core (or CUDA-core) FLOP/s its dtype runs at
    synchronises: bool = False
    shape: tuple[int, ...] = ()  # a product's (batch, M, N, K)
    kernels: int = 1
    tensors: int = 0


def op_time(
    func: Any,
    args: tuple,
    kwargs: dict,
    out: Any,
    device: DeviceSpec,
    calibration: Calibration,
    stage: str = "forward",
) -> OpTime:
    """The predicted GPU and CPU time of one operator call on ``device`` in ``stage``.

    A read of one value in the optimizer step is torch.optim's for-loop and multi-tensor
    steps reading their step counters, which they keep on the CPU: no kernel, and no wait for
    the GPU (the fused and capturable steps keep them on the GPU and read none).
    """
    work = op_work(func, args, kwargs, out)
    if work.kind == "sync" and stage.startswith("optimizer"):
        work = replace(work, kind="none", bytes=0, kernels=0)
    return OpTime(
        work.op,
        work.kind,
        work.flops,
        work.bytes,
        device_seconds(work, device, calibration),
        host_seconds(stage, work, calibration, func.namespace),
        tensor_rate(device, work.dtype),
        work.kind == "sync",
        work.shape,
        work.kernels,
        work.tensors,
    )
