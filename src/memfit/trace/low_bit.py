"""torchao's low-bit Adam on fake tensors: its state exactly, its compiled update as a model.

torchao's ``_AdamBase.step`` (``torchao/optim/adam.py``, the base of ``AdamW8bit``,
``AdamW4bit``, ``AdamWFp8`` and ``_AdamW``) creates each parameter's state with its own
constructors and then runs ``torch.compile(single_param_adam)`` on it. The tracer cannot compile
on fake tensors, so within ``torchao_stand_in()`` that step is replaced by one that

* creates the state exactly as torchao does: ``state["step"] = torch.tensor(0.0)`` (host), and
  ``exp_avg``/``exp_avg_sq`` (and ``max_exp_avg_sq``) from torchao's own ``_new_buffer`` (its
  tensor subclasses' ``zeros``, so the layouts are torchao's: codes, one float32 scale per
  block, and for 8- and 4-bit a float32 code map per tensor; plain tensors in the parameter's
  dtype below 4096 elements or when the block does not divide the tensor);
* allocates and frees the temporaries of the compiled kernel (``STEP_TEMPORARIES``), and
  charges its time as one pass reading and writing the parameter, its gradient and its state.

Known limitations:
    * The compiled kernel's temporaries were read from inductor's output code on a CPU (torch
      2.14, torchao 0.18); Triton's kernels on a GPU may fuse differently.
      ``bench/optimizer_state.py`` measures them on the GPU.
    * torchao's first steps compile (once per parameter shape); compilation time and memory
      are not predicted.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

__all__ = ["STEP_TEMPORARIES", "torchao_stand_in", "step_temporaries"]

STEP_TEMPORARIES: dict[str, tuple[tuple[float, float], ...]] = {
    # per moment, each buffer as (bytes per element of the parameter, bytes per block)
    "OptimState8bit": ((4, 0), (0, 4)),  # the updated moment in float32, its block maxima
    "OptimState4bit": ((1, 0), (4, 0), (8, 0), (0, 4)),  # unpacked codes, float32, int64 codes
    "OptimStateFp8": ((0, 4),),  # block maxima only: the kernel quantizes as it goes
}
"""Buffers ``torch.compile(single_param_adam)`` allocates for one parameter, by the type of its
moments, from inductor's output code (CPU, torch 2.14, torchao 0.18; ``TORCH_LOGS=output_code``):
8-bit, two (256, 256)-shaped float32 buffers and two of one float32 per block for a 65,536
element weight; 4-bit, two uint8 buffers of one byte per element, two float32 and two int64
ones of one element each, and two of one float32 per block; fp8, two of one float32 per block.
Plain moments (small tensors) need none; stochastic rounding adds one int64 seed."""


def step_temporaries(param: torch.Tensor, moment: Any, stochastic: bool) -> list[int]:
    """The bytes of each buffer the compiled update of ``param`` allocates (both moments)."""
    sizes = [8] if stochastic else []
    kind = type(moment).__name__
    if kind not in STEP_TEMPORARIES:
        return sizes
    blocks = param.numel() // moment.block_size
    for per_element, per_block in STEP_TEMPORARIES[kind]:
        size = math.ceil(per_element * param.numel() + per_block * blocks)
        sizes += [size, size]  # one for each moment
    return sizes


@contextlib.contextmanager
def torchao_stand_in() -> Iterator[None]:
    """Within the context, torchao's Adam steps as ``_stand_in_step`` (nothing compiles).

    Does nothing unless torchao is imported already: the appliers that step through it
    import it before the step is traced (and importing it takes seconds).
    """
    adam = sys.modules.get("torchao.optim.adam")
    if adam is None:
        yield
        return
    # torch.optim.Optimizer wraps a class's step with its hooks the first time the class is
    # instantiated, as the class's own attribute: patch every class of the family, marked as
    # wrapped already, and put each attribute back as it was (absent included)
    classes = [adam._AdamBase, *_subclasses(adam._AdamBase)]
    saved = {cls: cls.__dict__.get("step") for cls in classes}
    for cls in classes:
        cls.step = _stand_in_step
    try:
        yield
    finally:
        for cls, step in saved.items():
            if step is None:
                del cls.step
            else:
                cls.step = step


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    subclasses: list[type] = cls.__subclasses__()
    for sub in subclasses:
        found += [sub, *_subclasses(sub)]
    return found


@torch.no_grad()
def _stand_in_step(self: Any, closure: Any = None) -> None:
    """torchao's ``_AdamBase.step`` with its state, without its compiled kernel."""
    for group in self.param_groups:
        for param in group["params"]:
            if param.grad is None:
                continue
            state = self.state[param]
            if len(state) == 0:  # as torchao initialises it
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = self._new_buffer(param, True)
                state["exp_avg_sq"] = self._new_buffer(param, False)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = self._new_buffer(param, False)
            state["step"] += 1
            stochastic = self.bf16_stochastic_round and param.dtype is torch.bfloat16
            held = [
                torch.empty(size, dtype=torch.uint8)
                for size in step_temporaries(param, state["exp_avg"], stochastic)
            ]
            _one_pass(param, state)
            del held


_stand_in_step.hooked = True  # type: ignore[attr-defined]  # Optimizer leaves it unwrapped


def _one_pass(param: torch.Tensor, state: dict[str, Any]) -> None:
    """Charge the kernel's time: read and write the parameter and the state, read the grad."""
    assert param.grad is not None
    param.add_(param.grad, alpha=0.0)
    for name in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        moment = state.get(name)
        if moment is None:
            continue
        inner = _inner(moment)
        for tensor in inner:
            tensor.copy_(tensor)


def _inner(tensor: torch.Tensor) -> list[torch.Tensor]:
    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [t for name in names for t in _inner(getattr(tensor, name))]
