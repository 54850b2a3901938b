"""Predicted step time: a roofline per operator, from its FLOPs and the bytes it moves.

For each ATen operator the step runs, ``t = max(flops / (eff_mm * rate), bytes / (eff_bw *
bandwidth)) + launch``: matrix products and attention are bound by the tensor-core rate of
their dtype (FLOPs from PyTorch's own ``torch.utils.flop_counter`` formulas), everything else by
memory bandwidth (bytes read plus bytes written), and each kernel pays a launch overhead that
eager PyTorch cannot hide. ``memfit calibrate`` replaces the three efficiency constants with
what the local GPU achieves (``Calibration``). Recomputation (checkpointing) costs the forward
time of the recomputed operators again.

Known limitations:
    * Kernel fusion (torch.compile) and overlap of independent kernels are not modelled.
    * Small matrix products are treated as efficient as large ones beyond the launch cost.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from memfit.devices import DeviceSpec

__all__ = [
    "Calibration",
    "OpTime",
    "op_time",
    "price",
    "load_calibration",
    "save_calibration",
]


@dataclass(frozen=True)
class Calibration:
    """Effective fractions of the datasheet rates, and per-operator overheads.

    The defaults were fitted (least squares on relative error) to seven measured step times of
    Hugging Face GPT-2, GPT-2 medium and a LLaMA-style 1B, unmodified and checkpointed, bf16-mixed
    on an H200 (bench/results/frontier_h200.json): the predictions land within 10% of them. The
    matmul efficiency comes out at the datasheet rate because FlopCounterMode counts the FLOPs
    of the products only, while their epilogues overlap the memory-bound work around them.
    ``selective_op_s`` is what selective checkpointing adds per operator in its regions (its
    dispatch mode intercepts every operator in forward and in recomputation, in Python): every
    block of the same three models checkpointed selectively (matrix products kept) ran 38-68 us
    per operator and pass slower than predicted without it
    (bench/results/diag_techniques_h200.json); 55 us errs towards not choosing it in eager mode.
    """

    matmul_efficiency: float = 1.0
    bandwidth_efficiency: float = 0.5
    launch_s: float = 6e-6
    selective_op_s: float = 55e-6
    device: str = ""


@dataclass(frozen=True, slots=True)
class OpTime:
    """One operator's predicted cost."""

    op: str
    flops: float
    bytes: int
    seconds: float
    rate: float = 0.0  # the tensor-core (or CUDA-core) FLOP/s its dtype runs at


def _matmul_rate(device: DeviceSpec, dtype: torch.dtype) -> float:
    if dtype in (torch.bfloat16,):
        return device.bf16_flops or device.fp32_flops
    if dtype in (torch.float16,):
        return device.fp16_flops or device.fp32_flops
    # torch's default float32 matmul precision is "highest": CUDA cores, not TF32
    return device.fp32_flops


def _bytes_moved(args: Any, out: Any) -> int:
    seen: set[int] = set()
    total = 0
    for value in tree_flatten((args, out))[0]:
        if isinstance(value, torch.Tensor):
            key = id(value)
            if key not in seen:
                seen.add(key)
                total += value.numel() * value.element_size()
    return total


# memfit's own operators (``torch.ops.memfit``): passes over the tensors they write in place,
# beyond the read and the write the roofline counts. cross_entropy_grad_ reads a chunk of logits
# twice (softmax statistics, then the gradient) and writes it once.
_EXTRA_PASSES = {"cross_entropy_grad_": 1}


def _written_bytes(func: Any, args: tuple) -> int:
    """Bytes of the arguments ``func`` writes in place (its schema's ``Tensor(a!)``)."""
    total = 0
    for argument, value in zip(func._schema.arguments, args, strict=False):
        alias = argument.alias_info
        if alias is not None and alias.is_write and isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


def _launches_nothing(func: Any, args: tuple, kwargs: dict, out: Any) -> bool:
    """Views, metadata and aliasing operators: every output shares an input's storage."""
    if func.namespace == "memfit":
        return False
    if func.namespace != "aten" or func.overloadpacket is torch.ops.aten._local_scalar_dense:
        return True
    if func._schema.is_mutable:
        return False
    outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    if not outputs:
        return True
    inputs = {
        t.untyped_storage()._cdata
        for t in tree_flatten((args, kwargs))[0]
        if isinstance(t, torch.Tensor)
    }
    return all(t.untyped_storage()._cdata in inputs for t in outputs)


def op_time(
    func: Any, args: tuple, kwargs: dict, out: Any, device: DeviceSpec, calibration: Calibration
) -> OpTime:
    """The predicted time of one operator call on ``device``."""
    name = func.__name__.removesuffix(".default")
    if _launches_nothing(func, args, kwargs, out):
        return OpTime(name, 0.0, 0, 0.0)
    flop_fn = flop_registry.get(func.overloadpacket)
    flops = 0.0
    if flop_fn is not None:
        try:
            flops = float(flop_fn(*args, **kwargs, out_val=out))
        except Exception:  # formulas assume standard arguments; fall back to bandwidth only
            flops = 0.0
    moved = _bytes_moved(args, out)
    if func.namespace == "memfit":
        written = _written_bytes(func, args)
        moved += written * (1 + _EXTRA_PASSES.get(name, 0))  # written back, and read again
    if flops == 0.0 and moved == 0:
        return OpTime(name, 0.0, 0, 0.0)  # metadata and views launch nothing
    first = next((t for t in tree_flatten(args)[0] if isinstance(t, torch.Tensor)), None)
    dtype = first.dtype if first is not None else torch.float32
    compute = flops / (calibration.matmul_efficiency * _matmul_rate(device, dtype))
    memory = moved / (calibration.bandwidth_efficiency * device.bandwidth_bytes_s)
    rate = _matmul_rate(device, dtype)
    return OpTime(name, flops, moved, max(compute, memory) + calibration.launch_s, rate)


def price(
    flops: float, moved: int, rate: float, device: DeviceSpec, calibration: Calibration
) -> float:
    """The roofline time of an operator from its FLOPs and bytes (for re-pricing a trace)."""
    compute = flops / (calibration.matmul_efficiency * rate) if flops else 0.0
    memory = moved / (calibration.bandwidth_efficiency * device.bandwidth_bytes_s)
    return max(compute, memory) + calibration.launch_s


def _calibration_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memfit" / "calibration.json"


def load_calibration(device: DeviceSpec) -> Calibration:
    """The calibration ``memfit calibrate`` saved for this device, or the defaults."""
    path = _calibration_path()
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get(device.name)
        except (OSError, json.JSONDecodeError):
            saved = None
        if saved:
            return Calibration(**saved)
    return Calibration()


def save_calibration(calibration: Calibration) -> Path:
    path = _calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[calibration.device] = asdict(calibration)
    path.write_text(json.dumps(data, indent=2))
    return path
