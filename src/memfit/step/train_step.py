"""TrainStep: one training step (forward, backward, optimizer) with a plan's techniques in force.

The same class runs on real GPUs (``memfit.apply``) and on fake tensors (``memfit.estimate``
traces it), so a plan is predicted by tracing exactly the code that will run. It implements the
guard's micro-batch protocol (``memfit.guard.protocol.MicroBatchStep``): ``OOMGuard(step)``
retries a batch in smaller slices through ``forward_backward`` and ``optimizer_step``.

The step keeps only the loss: the model's output is released as soon as the loss is computed,
backward runs outside autocast, and gradients are set to None after the optimizer step.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from memfit.errors import InvalidInputError
from memfit.step.batch import batch_size_of, call_model, micro_batch_sizes, split_batch
from memfit.step.causal_lm_loss import hf_causal_lm_loss
from memfit.step.lean_saving import lean_saving, per_module, warn_if_compiled
from memfit.step.loss import IGNORE_INDEX, LossFn, compute_loss, loss_is_stand_in, optimizer_update
from memfit.step.overhead import note as note_overhead
from memfit.step.precision import Precision, check_weights_for
from memfit.step.undo import applied, undo_all
from memfit.technique_rules import check_combination, check_step_options
from memfit.techniques import MicroBatch, OptimizerInBackward

__all__ = ["TrainStep"]

Mark = Callable[[str], None]


def _no_mark(stage: str) -> None:
    return None


class TrainStep:
    """``loss = step(batch)``: forward, backward and optimizer step, as the plan says.

    Args:
        model: the module (or any callable taking the batch, e.g. memfit's fake-tensor model).
        optimizer: its optimizer, or None for forward and backward only.
        loss_fn: ``(output, batch) -> scalar``; default ``output.loss`` or the mean output.
        forward: ``(model, batch) -> output`` when the model is not called as
            ``model(batch)`` / ``model(**batch)`` / ``model(*batch)``.
        precision: ``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"`` or ``"bf16"``.
        micro_batches: split each batch into this many micro-batches (gradient accumulation,
            losses weighted by ``n_i / N``: exact for losses that are means over samples;
            memfit's chunked loss and Hugging Face's causal-LM loss divide each by the whole
            batch's labelled tokens instead, exact for token means).
        device_type: the device autocast (and fp16's gradient scaler) runs for; None: the
            device of the model's parameters (``"cuda"``, or ``"cpu"`` for a model on the CPU,
            which then runs CPU autocast in the plan's precision).
        forward_batch: what the model is called with, given the batch (a technique may drop
            keys, such as labels when the loss is computed outside the model).
        lean_autocast: run autocast without its weight cache, and forward keeping no autocast
            copy twice (``LeanAutocast``).
        recompute_products: keep the factors of ``FusedGatedMLP``'s products, not the
            products.
        host_optimizer: the ``HostOptimizer`` of ``OffloadOptimizer``, told which backward
            ends the batch (its update runs then).
        clip_grad_norm: before each update, scale the gradients so that their global L2 norm
            is at most this (``torch.nn.utils.clip_grad_norm_``; after unscaling under fp16).
        accumulate: the optimizer steps after every ``accumulate`` calls of ``step(batch)``,
            each batch's loss scaled by ``1 / accumulate`` (gradient accumulation across
            batches: the update is the mean over them, as with ``micro_batches``).
        optimizer_in_backward: the optimizer updates each parameter in backward
            (``OptimizerInBackward``): the step's own update is then skipped.

    Attributes:
        autocast: a zero-argument factory of the autocast context (replaceable: memfit's tracer
            installs its CUDA emulation here).
        mark: called with ``"forward"``, ``"backward"`` (per micro-batch), ``"optimizer0"``,
            ``"zero_grad"`` and ``"end"`` at phase boundaries.
        grad_scaler: the ``torch.amp.GradScaler`` of fp16 training (None otherwise).
    """

    def __init__(
        self,
        model: Any,
        optimizer: torch.optim.Optimizer | None,
        *,
        loss_fn: LossFn | None = None,
        forward: Callable[[Any, Any], Any] | None = None,
        precision: str | Precision = "fp32",
        micro_batches: int = 1,
        device_type: str | None = None,
        forward_batch: Callable[[Any], Any] | None = None,
        lean_autocast: bool = False,
        recompute_products: bool = False,
        host_optimizer: Any = None,
        clip_grad_norm: float | None = None,
        accumulate: int = 1,
        optimizer_in_backward: bool = False,
    ) -> None:
        if micro_batches < 1:
            raise InvalidInputError(f"micro_batches={micro_batches} must be at least 1")
        precision = Precision.parse(precision)
        check_weights_for(model, precision)
        in_force: list[Any] = [OptimizerInBackward()] if optimizer_in_backward else []
        in_force += [MicroBatch(micro_batches)] if micro_batches > 1 else []
        check_combination(in_force)
        check_step_options(
            in_force,
            clip_grad_norm=clip_grad_norm,
            accumulate=accumulate,
            grad_scaler=precision.grad_scaler,
        )
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.forward = forward
        self.precision = precision
        self.micro_batches = micro_batches
        self.clip_grad_norm = clip_grad_norm
        self.batches_per_update = accumulate
        self.optimizer_in_backward = optimizer_in_backward
        self._pending = 0  # batches whose gradients wait for the update
        self.forward_batch = forward_batch
        self.lean_autocast = lean_autocast
        self.recompute_products = recompute_products
        self.host_optimizer = host_optimizer
        self._checked_label_shares = False
        self._hf_token_mean: bool | None = None  # the model's loss is HF's causal-LM loss
        # no loss_fn and no loss in the output: the mean output stands in (None: not yet seen)
        self.loss_is_output_mean: bool | None = None
        self.mark: Mark = _no_mark
        self.grad_scale: torch.Tensor | None = None  # fp16 scaling emulated on fake tensors
        self.grad_scaler: Any = None
        device_type = device_type or parameter_device_type(model)
        self.device_type = device_type
        if self.precision.grad_scaler and device_type != "fake":
            self.grad_scaler = torch.amp.GradScaler(device_type)
        dtype = self.precision.autocast_dtype
        if dtype is None:
            self.autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
                contextlib.nullcontext
            )
        else:
            cache = not lean_autocast
            self.autocast = lambda: torch.autocast(device_type, dtype=dtype, cache_enabled=cache)

    # --- the guard protocol ---------------------------------------------------------------
    def forward_backward(self, batch: Any, *, loss_scale: float = 1.0) -> torch.Tensor:
        """Forward and backward of one (micro-)batch; gradients add up in ``param.grad``."""
        self.mark("forward")
        note_overhead("forward_backward")  # the step-time model prices this call's Python
        with self.autocast(), self._saving():
            inputs = self.forward_batch(batch) if self.forward_batch else batch
            if self.forward is not None:
                output = self.forward(self.model, inputs)
            else:
                output = call_model(self.model, inputs)
            loss = compute_loss(self.loss_fn, output, batch)
            if self.loss_fn is None and self.loss_is_output_mean is None:
                self._note_loss_source(output)
            del output
        self.mark("backward")
        loss_scale /= self.batches_per_update
        scaled = loss * loss_scale if loss_scale != 1.0 else loss
        if self.grad_scaler is not None:
            self.grad_scaler.scale(scaled).backward()
        elif self.grad_scale is not None:
            (scaled * self.grad_scale).backward()
        else:
            scaled.backward()
        if self.host_optimizer is not None:  # its gradients' copies are queued, not held
            self.host_optimizer.check()
        return loss.detach()

    def _note_loss_source(self, output: Any) -> None:
        """Once: whether the model computed its loss; a real step warns when it did not (the
        tracer puts it in the profile's warnings instead)."""
        self.loss_is_output_mean = loss_is_stand_in(output)
        if self.loss_is_output_mean and self.device_type != "fake":
            warnings.warn(
                "memfit: the model's output holds no loss and no loss_fn was given, so the step "
                "minimises the mean of its first output tensor (output.float().mean()); pass "
                "loss_fn=lambda output, batch: ... (memfit.apply, memfit.measure) for your own "
                "loss",
                UserWarning,
                stacklevel=6,  # the caller of step(batch)
            )

    def _saving(self) -> contextlib.AbstractContextManager[Any]:
        if not (self.lean_autocast or self.recompute_products):
            return contextlib.nullcontext()
        warn_if_compiled(model_module(self.model))
        if per_module():  # the lean modules push the hooks around their own forward
            return contextlib.nullcontext()
        lean = self.lean_autocast
        return lean_saving(weights=lean, shared=lean, scoped=True)  # LeanAutocast's modules

    def optimizer_step(self) -> None:
        """Apply the accumulated gradients, then set them to None."""
        if self.optimizer is None:
            return
        self.mark("optimizer0")
        self.update()
        self.mark("zero_grad")
        self.optimizer.zero_grad(set_to_none=True)
        if self.host_optimizer is not None:
            self.host_optimizer.check()

    def update(self) -> None:
        """The optimizer's update from the gradients (clipped first, if asked); nothing when
        the optimizer ran in backward."""
        if self.optimizer is None or self.optimizer_in_backward:
            return
        optimizer_update(
            self.optimizer, self.grad_scaler, self.grad_scale, clip_grad_norm=self.clip_grad_norm
        )

    def synchronize(self) -> None:
        """Wait until the last step's updates are all in the weights.

        ``OffloadOptimizer``'s host worker may still be updating the last weights when
        ``step`` returns; a forward, ``state_dict()`` and undo wait for it themselves, so this
        is needed only before reading the weights' tensors directly. Nothing to wait for
        otherwise.
        """
        if self.host_optimizer is not None:
            self.host_optimizer.synchronize()

    # --- the whole step -------------------------------------------------------------------
    def undo(self) -> None:
        """Put the model (and optimizer) back exactly as before ``memfit.apply`` made this step
        (nothing to do, and no warning, for a plan that changed nothing); the step must not be
        called after that."""
        module = model_module(self.model)
        if module is None:
            raise InvalidInputError(
                f"this step runs {type(self.model).__name__}, not an nn.Module memfit changed; "
                f"there is nothing to undo"
            )
        if applied(module):
            undo_all(module)

    def __call__(self, batch: Any) -> torch.Tensor:
        return self.step(batch)

    def step(self, batch: Any) -> torch.Tensor:
        """Run one training step on ``batch``; returns its loss (detached).

        With ``accumulate=n``, the optimizer steps on every n-th call only.
        """
        loss = self.accumulate(batch)
        self._pending += 1
        if self._pending >= self.batches_per_update:
            self._pending = 0
            self.optimizer_step()
        self.mark("end")
        return loss

    def accumulate(self, batch: Any) -> torch.Tensor:
        """Forward and backward of ``batch`` in ``micro_batches`` slices; the mean loss."""
        if self.micro_batches == 1:
            self._ends_batch(True)
            return self.forward_backward(batch)
        total = batch_size_of(batch)
        if self.micro_batches > total:
            raise InvalidInputError(
                f"micro_batches={self.micro_batches} is more than the batch's {total} samples; "
                f"use at most {total}"
            )
        sizes = micro_batch_sizes(total, -(-total // self.micro_batches))
        parts = split_batch(batch, sizes)
        normalised = self._normalised_by_batch(batch, parts)
        if normalised is not None:  # each part's loss divided by the batch's labelled tokens
            with normalised as ready:
                losses = []
                for i, part in enumerate(ready):
                    self._ends_batch(i == len(ready) - 1)
                    losses.append(self.forward_backward(part))
                return torch.stack(losses).sum()
        if not self._checked_label_shares:  # once: the count needs a device synchronisation
            self._checked_label_shares = True
            warn_if_label_shares_differ(parts, sizes)
        loss: torch.Tensor | None = None
        for i, (part, size) in enumerate(zip(parts, sizes, strict=True)):
            self._ends_batch(i == len(parts) - 1)
            part_loss = self.forward_backward(part, loss_scale=size / total) * (size / total)
            loss = part_loss if loss is None else loss + part_loss
        assert loss is not None
        return loss

    def _ends_batch(self, last: bool) -> None:
        if self.host_optimizer is not None:
            self.host_optimizer.final_micro_batch = last

    def _normalised_by_batch(
        self, batch: Any, parts: list[Any]
    ) -> contextlib.AbstractContextManager[list[Any]] | None:
        """The parts, made to divide their token-mean losses by the whole batch's count of
        labelled tokens (so that they add up to the batch's loss however padding is spread),
        for the losses that can: memfit's chunked loss and Hugging Face's causal-LM loss.
        None for other losses (the parts are then weighted by their samples)."""
        loss_fn: Any = self.loss_fn
        if hasattr(loss_fn, "count_items"):
            return _with_num_items(loss_fn, loss_fn.count_items(batch), parts)
        if self._hf_token_mean is None:  # once: the signature and the loss do not change
            plain_call = loss_fn is None and self.forward is None and self.forward_batch is None
            self._hf_token_mean = plain_call and hf_causal_lm_loss(model_module(self.model))
        if self._hf_token_mean:
            labels = batch["labels"] if isinstance(batch, Mapping) else None
            if isinstance(labels, torch.Tensor) and labels.dim() == 2:
                count = (labels[:, 1:] != IGNORE_INDEX).sum()  # the labels its loss shifts in
                return contextlib.nullcontext(
                    [{**part, "num_items_in_batch": count} for part in parts]
                )
        return None


@contextlib.contextmanager
def _with_num_items(loss_fn: Any, count: torch.Tensor, parts: list[Any]) -> Iterator[list[Any]]:
    loss_fn.num_items = count
    try:
        yield parts
    finally:
        loss_fn.num_items = None


def warn_if_label_shares_differ(parts: list[Any], sizes: list[int]) -> None:
    """Warn when micro-batches hold shares of labelled tokens unlike their shares of samples.

    Losses weighted ``n_i / N`` add up to the full batch's when the loss is a mean over
    samples. Language-model losses are means over the tokens whose label is not -100: with
    padding, a micro-batch's share of those can differ from its share of samples, and the
    update is then not the full batch's.
    """
    labels = [p.get("labels") if isinstance(p, Mapping) else None for p in parts]
    if not all(
        isinstance(x, torch.Tensor) and not is_fake(x) and x.device.type != "meta" for x in labels
    ):
        return  # no labels, or a traced step: nothing to count
    counts = [int((x != IGNORE_INDEX).sum()) for x in labels]  # type: ignore[union-attr]
    total, samples = sum(counts), sum(sizes)
    gap = max(abs(c / max(1, total) - n / samples) for c, n in zip(counts, sizes, strict=True))
    if gap > 1e-6:
        warnings.warn(
            f"the micro-batches hold {counts} labelled tokens (labels other than -100) for "
            f"{sizes} samples: with a loss that is a mean over labelled tokens, weighting them "
            f"by samples gives another update than the full batch's (shares differ by up to "
            f"{gap:.1%}). Give batches of equal labelled lengths, a loss that is a mean over "
            f"samples, or plan without micro-batching (allow without 'micro_batch')",
            stacklevel=5,  # the caller of step(batch)
        )


def parameter_device_type(model: Any) -> str:
    """Where the model's parameters live ("cuda" if any do; "cuda" for a model without any)."""
    module = model_module(model)
    kinds = {p.device.type for p in module.parameters()} if module is not None else set()
    if "cuda" in kinds or not kinds:
        return "cuda"
    return sorted(kinds)[0]


def model_module(model: Any) -> nn.Module | None:
    """The nn.Module behind ``model`` (memfit's fake-tensor wrapper holds it as ``.module``)."""
    if isinstance(model, nn.Module):
        return model
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else None
