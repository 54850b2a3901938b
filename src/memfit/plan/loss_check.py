"""Which loss a chunked loss may compute in place of the step's: the user's loss, kept.

``ChunkedLoss`` computes the LM head and a ``CausalLMLoss`` itself, instead of the model's own
loss (or the user's ``loss_fn``). The planner chooses it only where that is the same function:

1. the user's ``loss_fn`` is a ``memfit.CausalLMLoss`` (declared: chunked with its settings);
2. the model is a real module: its own loss is compared with ``CausalLMLoss`` variants (shifted
   or not, mean or sum) on a slice of the example batch (its first sample, at most 128
   positions, one label set to the ignored index), value and gradient with respect to the
   logits, in float64 where the model is small enough to copy, else in its own precision: to
   1e-9 where the loss comes out in float64, to 2e-5 where it is taken in float32 (Hugging
   Face upcasts logits to float32); the first variant that matches is the one chunked;
3. the model's class declares its loss: Hugging Face's ``ForCausalLMLoss`` alone, or a class
   attribute ``memfit_loss = CausalLMLoss(...)`` (memfit's zoo).

Anything else (another ``loss_fn``, a loss with terms of its own, a builder's model that
declares nothing) leaves the chunked loss out, and the plan says why.

Known limitations:
    * The comparison runs on one slice of the example batch: a loss that differs only on
      inputs the slice does not show (an attention mask that excludes tokens from the loss,
      labels past the 128th position) is not told apart.
    * The check runs the model once in training mode, outside autocast; random number
      generators and buffers are restored after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake
from torch.func import functional_call

from memfit.step.batch import call_model
from memfit.step.causal_lm_loss import CausalLMLoss, declared_loss, logits_of
from memfit.step.loss import IGNORE_INDEX, own_loss
from memfit.trace.inputs import make_inputs, parse_input_spec

__all__ = ["chunkable_loss", "probe_loss", "PROBE_POSITIONS", "WIDE_LIMIT"]

PROBE_POSITIONS = 128  # positions of the example batch the check runs on
WIDE_LIMIT = 2**26  # parameters and buffers up to which the check runs in float64
CANDIDATES = (
    CausalLMLoss(),
    CausalLMLoss(shift=False),
    CausalLMLoss(reduction="sum"),
    CausalLMLoss(shift=False, reduction="sum"),
)
_DECLARE = (
    "if it is a causal-LM cross-entropy of the logits, pass it as loss_fn=memfit.CausalLMLoss("
    "ignore_index=..., label_smoothing=..., z_loss=..., reduction=..., shift=...)"
)


def chunkable_loss(
    model: Any,
    batch: Any,
    module: nn.Module,
    loss_fn: Any,
    forward: Callable[[Any, Any], Any] | None,
    head: str,
) -> tuple[CausalLMLoss | None, str | None]:
    """The loss a chunked loss may compute for this step, or None and the reason (a note).

    Args:
        model, batch: as given to ``memfit.plan`` (a real module is checked by running it).
        module: the traced module (the model's structure and class).
        loss_fn, forward: the step's.
        head: the LM head's name; no note is given when the model has no such Linear or the
            batch no labels, where the chunked loss does not apply anyway.
    """
    if not isinstance(_submodule(module, head), nn.Linear):
        return None, None
    if isinstance(loss_fn, CausalLMLoss):
        return loss_fn, None
    keys = _batch_keys(batch)
    if keys is not None and "labels" not in keys:
        return None, None
    if loss_fn is not None:
        return None, f"chunked loss left out: it would replace your loss_fn; {_DECLARE}"
    if isinstance(model, nn.Module) and _real(model):
        example = _real_batch(batch)
        if isinstance(example, Mapping) and isinstance(example.get("labels"), torch.Tensor):
            found = probe_loss(model, example, forward)
            if isinstance(found, CausalLMLoss):
                return found, None
            return None, f"chunked loss left out: {found}; {_DECLARE}"
    declared = declared_loss(module)
    if declared is not None:
        return declared, None
    return None, (
        f"chunked loss left out: the model's own loss could not be compared with a causal-LM "
        f"cross-entropy (it was given as a builder: built on fake tensors, it has no values); "
        f"pass the model itself, or {_DECLARE}"
    )


def probe_loss(
    module: nn.Module, batch: Mapping[str, Any], forward: Callable[[Any, Any], Any] | None = None
) -> CausalLMLoss | str:
    """The ``CausalLMLoss`` variant the model's own loss is on a slice of ``batch``, or why not.

    The model is left as it was: parameters, buffers, gradients and random number generators.
    """
    labels = batch["labels"]
    device = next((p.device for p in module.parameters()), labels.device)
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    wide = sum(t.numel() for t in tensors.values()) <= WIDE_LIMIT
    failure = ""
    for length in (PROBE_POSITIONS, None):
        probe = _probe_batch(batch, device, length)
        for precision in (torch.float64, None) if wide else (None,):
            try:
                with _preserved(module), torch.enable_grad():
                    output = _run(module, probe, forward, precision)
                    return _match(output, probe["labels"])
            except Exception as error:  # the user's model: any failure means "not checked"
                failure = f"{type(error).__name__}: {error}"
        if labels.shape[-1] <= PROBE_POSITIONS:
            break
    return (
        f"running the model on a slice of the example batch to compare its loss failed ({failure})"
    )


def _match(output: Any, labels: torch.Tensor) -> CausalLMLoss | str:
    own = own_loss(output)
    if not isinstance(own, torch.Tensor) or own.numel() != 1:
        return "the model returns no loss of its own to compare with"
    logits = logits_of(output)
    if not logits.requires_grad:
        return "the model's logits are not part of the graph of its loss"
    # a model that takes its loss on logits.float() (Hugging Face's) is float32-accurate only
    tolerance = 1e-9 if own.dtype == torch.float64 else 2e-5
    (own_grad,) = torch.autograd.grad(own, logits, retain_graph=True, allow_unused=True)
    if own_grad is None:
        return "the model's loss is not computed from the logits it returns"
    nearest = float("nan")
    for candidate in CANDIDATES:
        reference = candidate.from_logits(logits, labels)
        (grad,) = torch.autograd.grad(reference, logits, retain_graph=True)
        value_gap = abs(own.item() - reference.item())
        if value_gap <= tolerance * max(abs(reference.item()), 1e-30):
            gap = (own_grad - grad).abs().max()
            if float(gap) <= 10 * tolerance * float(grad.abs().max()):
                return candidate
        if candidate is CANDIDATES[0]:
            nearest = reference.item()
    return (
        f"the model's own loss ({own.item():.6g} on a slice of the example batch) is not a "
        f"causal-LM cross-entropy of its logits (shifted mean {nearest:.6g}; label smoothing, "
        f"a z-loss or terms of its own differ)"
    )


class _Call(nn.Module):
    """The module, called on a batch as the step calls it (for ``functional_call``)."""

    def __init__(self, module: nn.Module, forward: Callable[[Any, Any], Any] | None) -> None:
        super().__init__()
        self.module = module
        self.call = forward

    def forward(self, batch: Any) -> Any:
        return self.call(self.module, batch) if self.call else call_model(self.module, batch)


def _run(
    module: nn.Module,
    batch: dict[str, Any],
    forward: Callable[[Any, Any], Any] | None,
    precision: torch.dtype | None,
) -> Any:
    wrapper = _Call(module, forward)
    if precision is None:
        return wrapper(batch)
    tensors = {}
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        copy = tensor.detach()
        if copy.is_floating_point():
            copy = copy.to(precision).requires_grad_(isinstance(tensor, nn.Parameter))
        tensors[f"module.{name}"] = copy
    return functional_call(wrapper, tensors, (batch,))


def _probe_batch(batch: Mapping[str, Any], device: torch.device, length: int | None) -> dict:
    """The first sample, its first ``length`` positions, one label set to the ignored index."""
    labels = batch["labels"]
    samples, positions = labels.shape[0], labels.shape[-1]
    probe = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == samples:
            value = value[:1]
            if length is not None and value.dim() >= 2 and value.shape[1] == positions:
                value = value[:, :length]
            value = value.to(device)
        probe[key] = value
    ignored = probe["labels"].clone()
    if ignored.shape[-1] >= 4:
        ignored[..., 2] = IGNORE_INDEX
    probe["labels"] = ignored
    return probe


@contextlib.contextmanager
def _preserved(module: nn.Module) -> Iterator[None]:
    """Restore the module's buffers and the random number generators after the block."""
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)


def _submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


def _real(module: nn.Module) -> bool:
    tensors = list(module.parameters())
    return bool(tensors) and not any(t.is_meta or is_fake(t) for t in tensors)


def _batch_keys(batch: Any) -> set[str] | None:
    """The names of a batch's inputs, where they can be read without building it."""
    if isinstance(batch, Mapping):
        return set(batch)
    if isinstance(batch, str):
        try:
            return {s.name for s in parse_input_spec(batch) if s.name}
        except Exception:  # a malformed spec is reported by the trace, with its fix
            return None
    return None


def _real_batch(batch: Any) -> Any:
    if isinstance(batch, str):
        return make_inputs(parse_input_spec(batch))
    if callable(batch):
        return batch()
    return batch
