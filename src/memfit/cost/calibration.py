"""The step-time model's constants: one set per GPU, fitted per operator class.

The defaults were fitted on one H200 and the CPU of its machine (``python bench/fit_costs.py
fit`` on bench/results/costs_h200.json.gz, written to bench/results/fit_costs_h200.json), on
Hugging Face GPT-2, LLaMA-1B, BERT-base and torchvision's ResNet-50 in 12 technique
configurations each; validated on a Qwen2-shaped and a Mistral-shaped LLM and an
``nn.TransformerEncoder`` (the README has the errors). The device side was fitted to the
profiler's GPU time per ATen operator, the host side to each step's CPU time; a host constant
the fit set to 0 is kept as a field for ``memfit calibrate`` and later fits. ``memfit
calibrate`` rescales them for the local GPU and CPU and saves them here.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from datetime import date
from importlib import metadata
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
        unaligned_matmul_factor: what a 16-bit product keeps of that when a dimension is not
            a multiple of 8 (Hugging Face GPT-2's 50,257-token head): no aligned tensor-core
            loads.
        attention_efficiency: fraction of the tensor-core rate attention forward reaches;
            ``attention_backward_efficiency`` the same for its backward.
        conv_efficiency: the same for convolutions (cuDNN).
        bandwidth_efficiency: fraction of the datasheet bandwidth pointwise kernels and fills
            reach on large tensors.
        copy_efficiency: the same for copies, casts and concatenations.
        reduction_efficiency: the same for reductions, softmax, gathers and scatters.
        norm_efficiency: the same for layer and RMS norms; ``batch_norm_efficiency`` for
            batch norms (channels-first: much less).
        optimizer_efficiency: the same for fused and multi-tensor optimizer kernels.
        kernel_s: the least time a kernel takes on the device (launch to completion).

    Host side (what eager PyTorch takes on the CPU to issue an operator; a step is as slow as
    the slower of the CPU issuing and the GPU running, ``memfit.cost.timeline``):

    Attributes:
        host_forward_op_s: per operator of forward (and of recomputation): Python modules,
            the dispatcher, autograd recording.
        host_backward_op_s: per operator the autograd engine runs in backward.
        host_optimizer_op_s: per operator of the optimizer step; ``host_tensor_s`` more per
            tensor it takes.
        optimizer_step_s: per optimizer step: torch.optim's Python, which walks every
            parameter and its state before issuing the update (noted by the training step).
        host_view_op_s: per view, metadata operator or allocation (no kernel), in any phase.
        forward_backward_s: per forward and backward of the training step (one per
            micro-batch): autocast, the loss, the call's own Python.
        module_call_s: per module call (forward and recomputation): the Python of a module's
            own code besides its operators (Hugging Face models run a lot of it).
        checkpoint_region_s: per checkpointed region and step: the checkpoint's own Python
            (its hooks in forward, setting up the recomputation in backward).
        checkpoint_op_s: per operator a checkpointed region runs in forward (non-reentrant
            checkpoint packs each tensor the region saves through a Python hook).
        selective_op_s: what selective checkpointing's dispatch mode adds per operator of its
            regions, in forward and in recomputation (Python per operator).
        recompute_op_s: what checkpointing adds per operator it recomputes in backward
            (non-reentrant ``torch.utils.checkpoint`` unpacks each saved tensor through a
            Python hook, which runs the recomputation and packs its outputs again).
        offload_tensor_s: per tensor ``OffloadActivations`` moves to the host and back, in
            forward and backward together, added to the CPU's time.
        lean_tensor_s: per tensor autograd saves while ``LeanAutocast`` or ``FusedGatedMLP``
            is in force (``memfit.step.lean_saving``'s hooks, in forward and backward
            together), added to the CPU's time; ``lean_recipe_s`` more per tensor they store
            as a recipe (a weight cast again, a shared cast, a gated product).
    """

    matmul_efficiency: float = 0.90
    matmul_tile: int = 128 * 256
    unaligned_matmul_factor: float = 0.20
    attention_efficiency: float = 0.23
    attention_backward_efficiency: float = 0.28
    conv_efficiency: float = 0.19
    bandwidth_efficiency: float = 0.83
    copy_efficiency: float = 0.49
    reduction_efficiency: float = 0.39
    norm_efficiency: float = 0.32
    batch_norm_efficiency: float = 0.10
    optimizer_efficiency: float = 0.65
    kernel_s: float = 2.7e-6
    host_forward_op_s: float = 40e-6
    host_backward_op_s: float = 18e-6
    # every fitted step ran fused AdamW (two operators a step), so the fit could not tell a
    # per-step cost from a per-operator one: it found 2.83 ms an operator, here 5.66 ms a step
    # and an operator of the optimizer priced as one of forward (multi-tensor AdamW issues
    # a dozen operators, which at 2.83 ms each made its step look 18 times slower on GPT-2)
    host_optimizer_op_s: float = 40e-6
    optimizer_step_s: float = 5.66e-3
    host_view_op_s: float = 0.0
    host_tensor_s: float = 0.0
    # forward_backward_s and recompute_op_s (and a per-region constant, since replaced, below):
    # re-fitted (bench/replan_compare.py) on the step and host times of bench/plans.py's first
    # H200 run (GPT-2, LLaMA-1B, BERT-base, ResNet-50), held out: its other models and run 2.
    # Checkpointing's Python runs mostly in recomputation (non-reentrant checkpoint's saved-
    # tensor hooks, per operator), where the CPU is ahead of the GPU, not at the region's
    # entry in forward, where it is not: all of it charged there (1.3 ms a region) made
    # GPU-bound checkpointed steps look 5-10 points slower than measured
    forward_backward_s: float = 3.6e-3
    module_call_s: float = 0.0
    # a region's Python in forward, per region and per operator it runs (the pack hook of each
    # tensor it saves): fitted on bench/diag_techniques.py's two H200 runs (13 checkpointed
    # configurations of GPT-2, GPT-2 medium and LLaMA-1B, regions of one norm to whole
    # blocks; `python bench/fit_regions.py`); one 0.88 ms a region, fitted on whole blocks
    # alone, priced LLaMA-1B's 32 checkpointed norms at +11% where they measured +0.1%
    checkpoint_region_s: float = 0.3e-3
    checkpoint_op_s: float = 10e-6
    selective_op_s: float = 37e-6
    recompute_op_s: float = 36e-6
    # fitted on LLaMA-1B's two plans with offloaded boundaries in plans run 8 (H100; 0, 0.5,
    # 1 ms: within 1.3 / 0.9 / 3.4 points), the least any class measured: the encoder's ladder
    # rows, held out, want 2 ms, ResNet-50's (GPU-bound) hardly move with it
    # (`python bench/fit_offload.py`, bench/results/fit_offload_h100.json). Unpriced, the
    # planner took offloaded boundaries where checkpointing alone plus expandable segments
    # measured faster (the encoder: 30.5 against 42.3 ms with all six blocks). Those runs had
    # the offloader's sleeping waits; with spinning ones the encoder still spent 0.87 ms a
    # tensor more (48.9 against 43.7 ms, six tensors, bench/results/offload_host_probe_h100.json)
    offload_tensor_s: float = 0.5e-3
    # fitted (`python bench/fit_lean.py fit`) on the Qwen2 shape's alternated steps with lean
    # autocast on the whole model, on every block and on one block against the unmodified
    # step (+21.1 / +18.6 / +10.4% on an H100 whose CPU ran the unmodified step 1.33 times
    # slower than the defaults' machine; bench/results/lean_scope_probe_h100_run1.json): priced
    # within 1.3 ms of each. Unpriced, the planner took `lean x1` on that model for a step
    # measured 21% slower than `full ckpt x1` (plans run 1 of bench/measured_plans.py)
    lean_tensor_s: float = 11e-6
    lean_recipe_s: float = 32e-6
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
    """Save ``calibration`` for its device, with what made it (``made_with``: the torch and
    memfit releases and the date; a later memfit reads past it)."""
    path = _calibration_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[calibration.device] = {**asdict(calibration), "made_with": _made_with()}
    path.write_text(json.dumps(data, indent=2))
    return path


def _made_with() -> dict[str, str]:
    made = {"date": date.today().isoformat()}
    for package in ("torch", "memfit"):
        try:
            made[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return made
