"""PyTorch Lightning: a callback that runs each training step under ``OOMGuard``.

``Trainer(callbacks=[MemfitGuard()])``. With automatic optimization, the callback takes over the
module's ``training_step`` for the fit: it runs forward and backward itself (through
``trainer.strategy.backward``, so precision plugins and hooks apply), on the whole batch or, after
an out-of-memory error, on micro-batches with each loss weighted ``n_i / N``. Lightning then sees
the batch's loss as a graph-free stand-in, whose backward touches no parameter, and steps the
optimizer as usual. Gradients are zeroed where Lightning would have zeroed them (the first batch
of each accumulation window), before the guard's backward instead of after ``training_step``.

Importing this module imports Lightning (``lightning.pytorch``, else ``pytorch_lightning``);
memfit itself never does.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import torch

from memfit.errors import MemfitError
from memfit.guard import OOMGuard

__all__ = ["MemfitGuard"]


def _lightning() -> ModuleType:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MemfitError(
        "memfit.integrations.lightning needs PyTorch Lightning, which is not installed; install "
        "it with 'pip install lightning', or wrap your own training step in memfit.OOMGuard"
    )


pl = _lightning()


class _ModuleStep:
    """``MicroBatchStep`` over a LightningModule's ``training_step`` (forward and backward)."""

    def __init__(self, trainer: Any, module: Any, original: Any) -> None:
        self.trainer, self.model, self.original = trainer, module, original
        self.optimizer: torch.optim.Optimizer = trainer.optimizers[0]
        self.grad_scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.batch_idx = 0
        self.extra: tuple[Any, ...] = ()

    def forward_backward(self, batch: Any, *, loss_scale: float) -> torch.Tensor:
        out = self.original(batch, self.batch_idx, *self.extra)
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            raise MemfitError(
                "training_step returned no loss tensor under MemfitGuard; return the loss (or "
                "{'loss': loss}); skipping a batch by returning None is not supported while guarded"
            )
        scale = loss_scale / self.trainer.accumulate_grad_batches  # Lightning divides too
        self.trainer.strategy.backward(loss * scale, self.optimizer)
        return loss.detach()

    def optimizer_step(self) -> None:
        """Lightning steps the optimizer after ``training_step``."""


class MemfitGuard(pl.Callback):  # type: ignore[misc, name-defined]
    """Guard every training step of a fit against out-of-memory errors.

    Args:
        **options: ``OOMGuard`` settings (``min_micro_batch_size``, ``grow_after``, ...).

    Attributes:
        guard: the ``OOMGuard`` once the fit started (``guard.metrics`` for its counters; they
            are also logged with ``pl_module.log_dict`` on each batch end, prefix ``memfit/``).

    Raises:
        MemfitError: at setup, for manual optimization or more than one process.

    Known limitations:
        Automatic optimization on one device only (under DDP, Lightning syncs gradients inside
        backward, which the guard's vote cannot precede). ``self.log`` calls in
        ``training_step`` and the ``on_before_backward`` / ``on_after_backward`` hooks run once
        per micro-batch plus once for the stand-in. An OOM in the optimizer step is not caught.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.options = options
        self.guard: OOMGuard | None = None
        self._step: _ModuleStep | None = None
        self._module: Any = None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise MemfitError(
                "MemfitGuard supports automatic optimization; with manual optimization wrap the "
                "body of your training_step in memfit.OOMGuard(step_fn, optimizer=opt, model=self)"
            )
        if trainer.world_size > 1:
            raise MemfitError(
                f"MemfitGuard runs on one device, not {trainer.world_size}: Lightning's DDP syncs "
                f"gradients inside backward, before the guard's ranks could agree on a retry"
            )
        self._module = pl_module
        original = pl_module.training_step
        zero_grad = pl_module.optimizer_zero_grad

        def training_step(batch: Any, batch_idx: int, *extra: Any) -> Any:
            if self.guard is None:
                self._step = _ModuleStep(trainer, pl_module, original)
                self.guard = OOMGuard(self._step, **self.options)
            assert self._step is not None
            self._step.batch_idx, self._step.extra = batch_idx, extra
            if batch_idx % trainer.accumulate_grad_batches == 0:
                zero_grad(trainer.current_epoch, batch_idx, self._step.optimizer)
            loss = self.guard(batch)
            return loss.detach().requires_grad_()  # Lightning's backward on it changes nothing

        def optimizer_zero_grad(*args: Any, **kwargs: Any) -> None:
            """Zeroed before the guard's backward already (see training_step)."""

        pl_module.training_step = training_step
        pl_module.optimizer_zero_grad = optimizer_zero_grad

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kwargs: Any) -> None:
        if self.guard is not None:
            pl_module.log_dict(self.guard.metrics.as_dict(), on_step=True, on_epoch=False)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self._module is not None:
            for name in ("training_step", "optimizer_zero_grad"):
                vars(self._module).pop(name, None)
            self._module = None
