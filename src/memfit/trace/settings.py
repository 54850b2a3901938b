"""StepSettings: how the step to predict runs, besides the model and the batch.

``memfit.estimate``, ``memfit.plan`` and ``memfit.measure`` take these as keyword arguments; the
stages pass them on together as one object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from memfit.devices import DEFAULT_DEVICE, DeviceSpec, HostSpec, get_device
from memfit.errors import InvalidInputError
from memfit.step.loss import LossFn
from memfit.step.precision import Precision
from memfit.trace.allocator import AllocatorSettings
from memfit.trace.cuda.stack import DEFAULT_STACK, CudaStack
from memfit.trace.optimizers import check_optimizer
from memfit.trace.watchdog import DEFAULT_TIMEOUT_S

__all__ = ["StepSettings", "MODES"]

MODES = ("train", "inference")


@dataclass(frozen=True)
class StepSettings:
    """What the step does and where it runs.

    Attributes:
        loss_fn: ``(output, batch) -> scalar loss``; default ``output.loss``, else the mean
            of the output in float32.
        forward: ``(model, batch) -> output`` when the model is not called as
            ``model(batch)`` / ``model(**batch)`` / ``model(*batch)``.
        optimizer: ``"adamw"``, ``"adamw-fused"``, ``"adam"``, ``"adam-fused"``, ``"sgd"``, a
            factory ``params -> Optimizer``, or None for forward and backward only.
        precision: ``"fp32"``, ``"bf16-mixed"``, ``"fp16-mixed"`` or ``"bf16"`` (pure).
        device: a name from ``memfit devices``, ``"cuda"`` for the local GPU, or a DeviceSpec.
        stack: the target's software (cuDNN version...), which decides some kernels.
        allocator: ``PYTORCH_CUDA_ALLOC_CONF`` options to simulate; None: those this
            process's environment sets (``memfit.trace.alloc_conf``), else PyTorch's default.
        batch_size, seq_len: the size of a zoo model's default batch.
        mode: ``"train"`` (forward, backward, optimizer) or ``"inference"`` (the model in
            ``eval()``, forward only under ``torch.no_grad()``; ``torch.inference_mode()``
            allocates the same, or less: ``memfit.trace.estimate.estimate`` says where).
        timeout_s: stop tracing with an UnsupportedModelError after this many seconds (a
            model looping on tensor values); None for no limit.
        host: the machine around the GPU (memory, cores, CPU Adam rate), for plans that
            offload; None: this machine when the GPU is local, else a reference host.
        clip_grad_norm: the step clips the gradients to this global L2 norm before each
            update (None: no clipping).
        accumulate: the step accumulates the gradients of this many batches before each
            update (1: an update after every batch).
    """

    loss_fn: LossFn | None = None
    forward: Callable[[Any, Any], Any] | None = None
    optimizer: str | Callable[..., torch.optim.Optimizer] | None = "adamw"
    precision: str | Precision = "bf16-mixed"
    device: str | DeviceSpec = DEFAULT_DEVICE
    stack: CudaStack = DEFAULT_STACK
    allocator: AllocatorSettings | None = None
    batch_size: int | None = None
    seq_len: int | None = None
    mode: str = "train"
    timeout_s: float | None = DEFAULT_TIMEOUT_S
    host: HostSpec | None = None
    clip_grad_norm: float | None = None
    accumulate: int = 1

    @property
    def inference(self) -> bool:
        return self.mode == "inference"

    def __post_init__(self) -> None:
        """Check every setting before any work (a tracer run takes seconds)."""
        if self.mode not in MODES:
            raise InvalidInputError(
                f"mode={self.mode!r} is not a mode; allowed: {', '.join(map(repr, MODES))} "
                f"(inference: eval() and torch.no_grad(), forward only)"
            )
        timeout = self.timeout_s
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise InvalidInputError(
                f"timeout_s={timeout!r} must be a positive number of seconds, or None"
            )
        check_optimizer(self.optimizer)
        Precision.parse(self.precision)
        get_device(self.device)
        for name in ("loss_fn", "forward"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                shape = (
                    "(output, batch) -> loss" if name == "loss_fn" else "(model, batch) -> output"
                )
                raise InvalidInputError(
                    f"{name}={value!r} is not callable; pass a function {shape}, or None for "
                    f"the default"
                )
        for name in ("batch_size", "seq_len"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidInputError(
                    f"{name}={value!r} must be a whole number of at least 1 (or None for the "
                    f"zoo model's default), e.g. {name}=8"
                )

    def with_options(self, **options: Any) -> StepSettings:
        """These settings with some replaced, by keyword (``precision="fp32"``).

        Raises:
            InvalidInputError: a keyword that is not a setting (the message lists them).
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidInputError(
                f"unknown setting(s) {unknown}; the step's settings are: {', '.join(sorted(known))}"
            )
        return dataclasses.replace(self, **options)
