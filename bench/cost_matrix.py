"""Part "matrix" of bench/costs.py: measured step times of fixed technique configurations.

For each model of bench/models.py's CALIBRATION (GPT-2, LLaMA-1B, a Qwen2-shaped and a
Mistral-shaped 8-layer LLM, a 6-layer nn.TransformerEncoder, BERT-base, ResNet-50), bf16-mixed
and fused AdamW, the same configurations: unmodified; full checkpointing of all, half and a
quarter of the blocks; selective checkpointing (matrix products kept) of all blocks;
micro-batches x2, x4 and x4 with all blocks checkpointed; the chunked loss x4 (LLMs); fused
GELUs (where the model has Hugging Face's); lean blocks (norms and activations checkpointed on
their own, gated MLPs fused, lean autocast). Each is applied with memfit.apply to the same model
(undone after), timed, and profiled for one step (device and host time per ATen operator).

``configs`` is what bench/fit_costs.py traces on a CPU to fit and validate the step-time
model against these measurements.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import memfit
from cost_harness import Harness
from memfit.apply import applied, undo_all
from memfit.structure.blocks import find_blocks
from memfit.structure.gated_mlp import gated_mlps
from memfit.structure.layers import fusable_activations
from memfit.techniques import SELECTIVE_SAVE_DEFAULT, Checkpoint, ChunkedLoss, MicroBatch

C = Checkpoint


def _lean(model: nn.Module, blocks: list[str]) -> list[Any]:
    """Lean blocks by hand: each block's norms and activation modules checkpointed on their
    own, gated MLPs fused, lean autocast (what memfit's lean policy does, fixed here)."""
    block = model.get_submodule(blocks[0])
    gated = gated_mlps(block)
    pointwise = [
        name
        for name, module in block.named_modules()
        if name
        and ("Norm" in type(module).__name__ or "Activation" in type(module).__name__)
        and not any(name.startswith(g + ".") for g in gated)
    ]
    found: list[Any] = []
    if gated:
        found.append(memfit.FusedGatedMLP(modules=tuple(f"{b}.{g}" for b in blocks for g in gated)))
    found.append(memfit.LeanAutocast())
    if pointwise:
        found.append(C(modules=tuple(f"{b}.{p}" for b in blocks for p in pointwise)))
    return found


def configs(model: nn.Module, batch_size: int, lm: bool) -> dict[str, list[Any]]:
    """The technique configurations measured for ``model`` (labels -> techniques)."""
    blocks = find_blocks(model)
    n = len(blocks)
    found: dict[str, list[Any]] = {"unmodified": []}
    for k in sorted({n, max(1, n // 2), max(1, n // 4)}, reverse=True):
        found[f"full ckpt {k}/{n}"] = [C(modules=tuple(blocks[:k]))]
    found[f"selective ckpt {n}/{n}"] = [C(modules=tuple(blocks), save=SELECTIVE_SAVE_DEFAULT)]
    for micro in (2, 4):
        if micro <= batch_size:
            found[f"micro-batch x{micro}"] = [MicroBatch(micro)]
    if batch_size >= 4:
        found[f"micro-batch x4 + full ckpt {n}/{n}"] = [C(modules=tuple(blocks)), MicroBatch(4)]
    if lm:
        found["chunked loss x4"] = [ChunkedLoss(4)]
    gelus = fusable_activations(model)
    if gelus:
        found["fused GELU"] = [memfit.FusedActivation(modules=tuple(gelus))]
    if gated_mlps(model) or any("Norm" in type(m).__name__ for m in model.modules()):
        found[f"lean {n}/{n}"] = _lean(model, blocks)
    return found


def run(
    harness: Harness,
    name: str,
    model: nn.Module,
    batch: Any,
    lm: bool,
    loss_fn: Callable | None,
    forward: Callable | None,
    record: Callable[[str, dict], None],
    only: set[str] | None = None,
) -> None:
    batch_size = _batch_size(batch)
    for label, techniques in configs(model, batch_size, lm).items():
        if only and label not in only:
            continue
        row: dict = {"techniques": [memfit.techniques.technique_label(t) for t in techniques]}
        try:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=harness.cuda)
            step = memfit.apply(
                techniques,
                model,
                optimizer,
                loss_fn=loss_fn,
                forward=forward,
                precision="bf16-mixed",
                device_type=harness.device,
            )
            row["measured"] = harness.measure(step, batch)
            row["profile"] = harness.profile(step, batch)
        except Exception:
            row["error"] = traceback.format_exc()[-3000:]
        finally:
            _undo(model)
            step = optimizer = None
            harness.clean()
        record(f"{name} | {label}", row)


def _batch_size(batch: Any) -> int:
    first = batch if isinstance(batch, torch.Tensor) else None
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    elif isinstance(batch, (tuple, list)):
        first = batch[0]
    return int(first.shape[0]) if first is not None else 1


def _undo(model) -> None:
    if applied(model):
        undo_all(model)
