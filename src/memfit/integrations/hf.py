"""Hugging Face ``Trainer``: guard its ``training_step`` against out-of-memory errors.

``guard_trainer(trainer)`` replaces the trainer's ``training_step`` (an instance attribute, so
subclasses such as TRL's trainers keep their own logic inside it) with one that runs under
``OOMGuard``: on an OOM the same ``inputs`` are re-run in micro-batches, each through the
original ``training_step`` with its loss scaled by ``n_i / N`` (or 1 when the model's loss
is already divided by the whole batch's ``num_items_in_batch``), so the gradients equal those of
the unsplit call. The optimizer step stays in the Trainer's loop.

Tip: with the guard, ``per_device_train_batch_size`` can be the batch you want and
``gradient_accumulation_steps=1``; the guard splits only when memory runs short. Gradient
accumulation still works, but then gradients are non-zero before each call and the guard copies
them once per call (``snapshot_device``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError, MemfitError
from memfit.guard import OOMGuard
from memfit.integrations._require import require
from memfit.step.hf_loss_source import honours_num_items

__all__ = ["guard_trainer"]

log = logging.getLogger("memfit.guard")


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """accelerate wraps the optimizer; the guard needs the torch one (its state and hooks)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def _innermost(model: nn.Module) -> nn.Module:
    """The model inside PEFT's and the distributed wrappers."""
    while True:
        base = getattr(model, "get_base_model", None)  # peft
        inner = base() if callable(base) else getattr(model, "module", None)  # DDP, accelerate
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner


class _TrainerStep:
    """``MicroBatchStep`` over ``Trainer.training_step`` (forward and backward only)."""

    def __init__(self, trainer: Any, original: Any) -> None:
        self.trainer = trainer
        self.original = original
        self.model: nn.Module = trainer.model
        self.optimizer: torch.optim.Optimizer = _inner(trainer.optimizer)
        self.grad_scaler = getattr(trainer.accelerator, "scaler", None)
        self.wrapped_model: nn.Module = trainer.model
        self.num_items_in_batch: Any = None

    def _sum_semantics(self) -> bool:
        """Whether each part's loss is already its share of the batch's (divided by the whole
        batch's ``num_items_in_batch``), so the parts add up without weights.

        The Trainer assumes so of every model whose forward takes ``**kwargs``; most of those
        outside causal LMs (BERT, T5, Whisper, sequence classifiers) take their own mean and
        ignore the count, and their parts must be weighted by ``n_i / N``.
        """
        flag = getattr(self.trainer, "loss_is_scaled_for_ga", None)
        if flag is not None:
            return bool(flag)
        if getattr(self.trainer, "compute_loss_func", None) is not None:
            return True  # the user's loss is given the count
        accepts = bool(getattr(self.trainer, "model_accepts_loss_kwargs", False))
        counted = accepts and self.num_items_in_batch is not None
        return counted and honours_num_items(type(_innermost(self.model)))

    def forward_backward(self, batch: Any, *, loss_scale: float) -> torch.Tensor:
        scale = 1.0 if self._sum_semantics() else loss_scale
        trainer = self.trainer
        compute_loss = trainer.compute_loss

        def scaled(*args: Any, **kwargs: Any) -> Any:
            out = compute_loss(*args, **kwargs)
            if scale == 1.0:
                return out
            if isinstance(out, tuple):
                return (out[0] * scale, *out[1:])
            return out * scale

        had = "compute_loss" in vars(trainer)
        trainer.compute_loss = scaled
        try:
            loss = self.original(self.wrapped_model, batch, self.num_items_in_batch)
        finally:
            if had:
                trainer.compute_loss = compute_loss
            else:
                del trainer.compute_loss  # back to the class's method
        # the guard weights what this returns by loss_scale; the Trainer's value is already
        # scaled by `scale`, so undo exactly that much to keep the logged loss right
        return loss.detach() * (scale / loss_scale)

    def optimizer_step(self) -> None:
        """The Trainer's loop steps the optimizer after ``training_step``."""


def guard_trainer(trainer: Any, **options: Any) -> Any:
    """Run ``trainer``'s training steps under ``OOMGuard``; returns the same trainer.

    Args:
        trainer: a ``transformers.Trainer`` (or subclass), before ``trainer.train()``.
        **options: ``OOMGuard`` settings (``min_micro_batch_size``, ``grow_after``, ...).
            ``loss_reduction`` is decided per call from the Trainer's own loss normalisation.

    Returns:
        ``trainer``; its guard is ``trainer.memfit_guard`` once training started, and its
        metrics are added to the Trainer's logs (``memfit/micro_batch_size``, ...).

    Raises:
        MemfitError: transformers is not installed, or DeepSpeed/FSDP is enabled.
        InvalidInputError: ``trainer`` is not a Trainer.

    Known limitations:
        Single process, or DDP without gradient accumulation across calls (the Trainer's DDP
        gradient sync runs inside backward, which the guard's vote cannot precede). DeepSpeed
        and FSDP are refused. An OOM in the optimizer step (outside ``training_step``) is not
        caught. ``auto_find_batch_size`` is superseded and should be off.
    """
    transformers = require("transformers", pip="transformers", feature="guard_trainer")
    if not isinstance(trainer, transformers.Trainer):
        raise InvalidInputError(
            f"trainer of type {type(trainer).__name__} is not a transformers.Trainer; pass the "
            f"Trainer before calling trainer.train()"
        )
    if "loss_reduction" in options:
        raise InvalidInputError(
            "loss_reduction is decided from the Trainer's own loss normalisation; drop it"
        )
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(
        trainer, "is_fsdp_enabled", False
    ):
        raise MemfitError(
            "guard_trainer does not support DeepSpeed or FSDP (their collectives run inside "
            "backward); run without them or size the batch with memfit.find_batch_size"
        )
    if getattr(trainer.args, "auto_find_batch_size", False):
        log.warning(
            "memfit.guard: auto_find_batch_size restarts training at a smaller batch on OOM; "
            "the guard keeps the batch and splits it instead; set auto_find_batch_size=False"
        )
    original = trainer.training_step
    state: dict[str, Any] = {}

    def training_step(model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> Any:
        if "guard" not in state:
            state["step"] = _TrainerStep(trainer, original)
            state["guard"] = OOMGuard(state["step"], **options)
            trainer.memfit_guard = state["guard"]
        step: _TrainerStep = state["step"]
        step.wrapped_model, step.num_items_in_batch = model, num_items_in_batch
        return state["guard"](inputs)

    trainer.training_step = training_step
    trainer.callback_handler.callbacks.insert(0, _metrics_callback(transformers, trainer))
    return trainer


def _metrics_callback(transformers: Any, trainer: Any) -> Any:
    class MemfitGuardLogs(transformers.TrainerCallback):  # type: ignore[misc, name-defined]
        """Adds the guard's metrics to every log (placed first, before the reporters)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            guard = getattr(trainer, "memfit_guard", None)
            if guard is not None and logs is not None:
                logs.update(guard.metrics.as_dict())

    return MemfitGuardLogs()
