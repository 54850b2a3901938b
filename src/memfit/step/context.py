"""ApplyContext: what the appliers tell the training step about how to run it.

Some techniques change the model (checkpointing wraps forwards); others change how the step
calls the model and computes the loss (a chunked loss computes the LM head itself, so the model
must not receive the labels). Appliers write the second kind here; the training step reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from memfit.errors import InvalidInputError
from memfit.step.undo import UndoFn, run_in_reverse

__all__ = ["ApplyContext", "LossFn", "BatchFn", "OptimizerChange", "HostBytesFn", "set_once"]

LossFn = Callable[[Any, Any], torch.Tensor]
"""``(output, batch) -> scalar loss``; ``batch`` is the batch as given, labels included."""

BatchFn = Callable[[Any], Any]
"""``batch -> model inputs``: what the model is called with."""

OptimizerChange = Callable[[torch.optim.Optimizer], UndoFn]
"""Changes an optimizer in place (validating first, changing nothing when it raises); returns
the callable that changes it back."""

HostBytesFn = Callable[[int], dict[str, int]]
"""``micro_batches -> {part: bytes}``: the host memory a technique holds during the step."""


@dataclass
class ApplyContext:
    """How the training step must run once the techniques are applied.

    The step creates one context (with the user's ``loss_fn``, if any), passes it to
    ``apply_techniques``, and then, for each (micro-)batch::

        output = call_model(model, context.model_inputs(batch))
        loss = compute_loss(context.loss_fn, output, batch)   # the full batch, with labels

    Attributes:
        loss_fn: the loss; None means ``memfit.step.loss.default_loss`` (``output.loss``).
            ``ChunkedLoss`` sets it, and refuses to replace a loss the user gave.
        forward_batch: maps a batch to the model's inputs; None calls the model with the batch
            itself. ``ChunkedLoss`` sets it to drop the labels, so that the model does not
            compute a loss of its own on what are now hidden states.
        micro_batches: set by ``MicroBatch``: split each batch into this many micro-batches
            and accumulate gradients (None: one).
        precision: set by ``MixedPrecision``: the precision name the step runs in (None: as
            the step was configured).
        lean_autocast: set by ``LeanAutocast``: autocast without its weight cache, and its
            modules' forward under ``memfit.step.lean_saving.lean_saving`` (the whole forward
            before PyTorch 2.8).
        recompute_products: set by ``FusedGatedMLP``: its modules' forward under
            ``lean_saving`` (the whole forward before PyTorch 2.8).
        optimizer_in_backward: set by ``OptimizerInBackward``: each parameter is updated in
            backward, so the step's own update does nothing and the step refuses clipping,
            accumulation and loss scaling.
        low_bit: set by ``LowBitOptimizer``: its ``(kind, block_size)``, read when the
            optimizer is changed.
        pure_bf16: set by ``PureBF16``: the step runs in the ``"bf16"`` precision.
        stochastic_round: set by ``PureBF16(stochastic_round=True)``: the optimizer rounds
            its updates to bf16 stochastically (through torchao).
        optimizer_changes: what techniques do to the optimizer (``FusedOptimizer`` switches it
            to its fused kernel), run by ``change_optimizer`` once the optimizer exists: by
            ``memfit.apply`` on the user's, by the tracer on the one it builds.
        step_precision: the precision the step will run in, when the caller knows it before
            applying (appliers that depend on it check it: ``OffloadOptimizer``'s dtype).
        host_optimizer: set by ``OffloadOptimizer`` once the optimizer is changed: the
            ``HostOptimizer`` the step tells which backward ends a batch.
        host_memory: what techniques hold in host memory, one callable each (the tracer
            reports their sum).
        agreement: set by ``memfit.apply`` for a sharded plan in a distributed job: how the
            ranks agree that applying succeeded (``memfit.apply.sharding.Agreement``).
    """

    loss_fn: LossFn | None = None
    forward_batch: BatchFn | None = None
    micro_batches: int | None = None
    precision: str | None = None
    lean_autocast: bool = False
    recompute_products: bool = False
    optimizer_in_backward: bool = False
    low_bit: tuple[str, int | None] | None = None
    pure_bf16: bool = False
    stochastic_round: bool = False
    optimizer_changes: list[OptimizerChange] = field(default_factory=list)
    step_precision: str | None = None
    host_optimizer: Any = None
    host_memory: list[HostBytesFn] = field(default_factory=list)
    agreement: Any = None

    def host_bytes(self, micro_batches: int = 1) -> dict[str, int]:
        """Host memory the applied techniques hold, by part."""
        total: dict[str, int] = {}
        for part in self.host_memory:
            for name, size in part(micro_batches).items():
                total[name] = total.get(name, 0) + size
        return total

    def change_optimizer(self, optimizer: torch.optim.Optimizer | None) -> UndoFn:
        """Run ``optimizer_changes`` on ``optimizer``, all or none; returns their undo.

        Without an optimizer (forward and backward only) there is nothing to change.
        """
        done: list[UndoFn] = []
        if optimizer is not None:
            try:
                for change in self.optimizer_changes:
                    done.append(change(optimizer))
            except BaseException:
                run_in_reverse(done)
                raise
        return lambda: run_in_reverse(done)

    def model_inputs(self, batch: Any) -> Any:
        """What the model is called with for ``batch``."""
        return batch if self.forward_batch is None else self.forward_batch(batch)


def set_once(context: ApplyContext, flag: str, technique: str) -> Callable[[], None]:
    """Set the boolean ``flag`` of ``context`` for ``technique``; the returned undo clears it.

    Raises:
        InvalidInputError: the flag is set already (the plan has the technique twice).
    """
    if getattr(context, flag):
        raise InvalidInputError(f"the plan has {technique} twice; keep one")
    setattr(context, flag, True)
    return lambda: setattr(context, flag, False)
