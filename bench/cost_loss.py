"""Part "loss" of bench/costs.py: causal-LM loss implementations side by side.

On the Qwen2-shaped model (tied 151,936-token vocabulary, bs 4 x 1024) and Hugging Face
LLaMA-1B (bs 4 x 2048), bf16-mixed, fused AdamW: the whole training step with each loss, and
the head plus loss alone (forward and backward on the model's last hidden states), with a
kernel profile of the latter. The implementations:
  * unmodified: the model's own head and loss (Hugging Face's ForCausalLMLoss);
  * memfit ChunkedLoss x4 through memfit.apply (the code in src/, whatever it is now);
  * fused xN: memfit.apply.linear_cross_entropy from src/ called directly, for several chunk
    counts, its PyTorch-ops path (no Triton), and its float32-output head-gradient product;
  * previous x4: the chunked loss memfit had before (commit 0cfd4cf), copied here;
  * Liger Kernel's LigerFusedLinearCrossEntropyLoss, if liger_kernel is importable.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import memfit
from cost_harness import Harness
from memfit.apply import applied, cross_entropy_kernel, undo_all
from memfit.apply import linear_cross_entropy as fused_module
from memfit.apply.linear_cross_entropy import linear_cross_entropy

LossImpl = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor]


class _PreviousChunked(torch.autograd.Function):
    """memfit's chunked loss before this change (src/memfit/apply/chunked_loss.py at 0cfd4cf)."""

    @staticmethod
    def forward(ctx: Any, rows, weight, labels, chunks, count):  # type: ignore[override]
        size = max(1, math.ceil(rows.shape[0] / chunks))
        dtype = (
            torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else rows.dtype
        )
        if rows.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            dtype = torch.get_autocast_dtype("cpu")
        rows_low, weight_low = rows.to(dtype), weight.to(dtype)
        grad_rows = torch.empty_like(rows)
        grad_weight = torch.zeros_like(weight)
        total = rows.new_zeros((), dtype=torch.float32)
        with torch.autocast(rows.device.type, enabled=False):
            for start in range(0, rows.shape[0], size):
                chunk, target = rows_low[start : start + size], labels[start : start + size]
                logits = F.linear(chunk, weight_low).to(torch.float32)
                keep = target != -100
                index = torch.where(keep, target, 0).unsqueeze(1)
                picked = logits.gather(1, index)
                top = logits.amax(dim=-1, keepdim=True)
                grad = logits.sub_(top).exp_()
                total_exp = grad.sum(dim=-1, keepdim=True)
                lse = top + total_exp.log()
                total = total + ((lse - picked).squeeze(1) * keep).sum()
                scale = (keep.to(grad.dtype) / count).unsqueeze(1)
                grad.mul_(scale / total_exp)
                grad.scatter_add_(1, index, -scale)
                grad = grad.to(dtype)
                del logits
                grad_rows[start : start + size] = grad @ weight_low
                grad_weight += grad.t() @ chunk
        ctx.save_for_backward(grad_rows, grad_weight)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_output):  # type: ignore[override]
        grad_rows, grad_weight = ctx.saved_tensors
        return grad_rows * grad_output, grad_weight * grad_output, None, None, None


def previous(hidden, weight, bias, labels, chunks=4):
    rows, targets = hidden[:, :-1].reshape(-1, hidden.shape[-1]), labels[:, 1:].reshape(-1)
    return _PreviousChunked.apply(rows, weight, targets, chunks, (targets != -100).sum())


def unmodified(hidden, weight, bias, labels):
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())


def liger() -> LossImpl | None:
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    module = LigerFusedLinearCrossEntropyLoss()

    def loss(hidden, weight, bias, labels):
        rows = hidden[:, :-1].reshape(-1, hidden.shape[-1])
        return module(weight, rows, labels[:, 1:].reshape(-1), bias)

    return loss


def fused(chunks: int, triton: bool = True, fp32_product: bool = False) -> LossImpl:
    def loss(hidden, weight, bias, labels):
        saved = cross_entropy_kernel._TRITON, fused_module.FP32_OUT_PRODUCT
        cross_entropy_kernel._TRITON = saved[0] and triton
        fused_module.FP32_OUT_PRODUCT = fp32_product
        try:
            return linear_cross_entropy(hidden, weight, bias, labels, chunks)
        finally:
            cross_entropy_kernel._TRITON, fused_module.FP32_OUT_PRODUCT = saved

    return loss


def variants() -> dict[str, LossImpl | None]:
    found: dict[str, LossImpl | None] = {"unmodified (HF loss)": None}
    found["memfit.apply ChunkedLoss x4"] = None  # through the applier, see run()
    found["full logits, same harness"] = unmodified  # the unmodified loss in the step below
    for chunks in (1, 2, 4, 8):
        found[f"fused x{chunks}"] = fused(chunks)
    found["fused x4, PyTorch ops"] = fused(4, triton=False)
    found["fused x4, fp32-output product"] = fused(4, fp32_product=True)
    found["previous x4"] = previous
    impl = liger()
    if impl is not None:
        found["liger FLCE"] = impl
    return found


def _hidden_step(model, optimizer, impl: LossImpl, device: str) -> Callable[[Any], Any]:
    head = model.get_output_embeddings()

    def step(batch):
        with torch.autocast(device, dtype=torch.bfloat16):
            hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
            loss = impl(hidden, head.weight, head.bias, batch["labels"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def run(harness: Harness, name: str, model, batch, record: Callable[[str, dict], None]) -> None:
    """Every variant on ``model``: whole step, head + loss alone, a kernel profile."""
    device = harness.device
    hidden = _last_hidden(model, batch, device)
    # the head as it is now: every variant's loss alone is computed with it (the steps train)
    weight = model.get_output_embeddings().weight.detach().clone()
    reference = None
    for label, impl in variants().items():
        row: dict = {}
        try:
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=harness.cuda)
            plan = [memfit.ChunkedLoss(4)] if label.startswith("memfit.apply") else []
            if impl is None:
                step = memfit.apply(
                    plan, model, optimizer, precision="bf16-mixed", device_type=device
                )
            else:
                step = _hidden_step(model, optimizer, impl, device)
            row["step"] = harness.measure(step, batch)
            row["step_profile"] = harness.profile(step, batch, top=25)
            _undo(model)
            del step, optimizer
            harness.clean()
            alone = impl or unmodified
            row["alone"], value = _alone(harness, alone, hidden, weight, batch["labels"], device)
            reference = value if reference is None else reference
            row["loss"], row["loss_vs_unmodified"] = value, value - reference
        except Exception:
            row["error"] = traceback.format_exc()[-3000:]
            _undo(model)
        harness.clean()
        record(f"{name} | {label}", row)


def _last_hidden(model, batch, device: str) -> torch.Tensor:
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    return hidden.float().requires_grad_()


def _alone(
    harness: Harness, impl: LossImpl, hidden, head_weight, labels, device: str
) -> tuple[dict, float]:
    weight = head_weight.clone().requires_grad_()

    def once():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = impl(hidden, weight, None, labels)
        loss.backward()
        hidden.grad = weight.grad = None
        return loss

    value = float(once().detach())
    harness.clean()
    base = torch.cuda.memory_allocated() if harness.cuda else 0
    seconds = harness.seconds(once, repeats=5, warmup=1)
    peak = torch.cuda.max_memory_allocated() - base if harness.cuda else 0
    profile = harness.profile(lambda _: once(), None, top=15)
    return {"seconds": seconds, "peak_extra_allocated": peak, "profile": profile}, value


def _undo(model) -> None:
    if applied(model):
        undo_all(model)
