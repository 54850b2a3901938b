"""The LowBitOptimizer applier: the user's Adam/AdamW steps with torchao's low-bit optimizer.

torchao (``pip install "memfit[torchao]"``) implements Adam and AdamW with block-wise quantized
moments (``torchao.optim.AdamW8bit``, ``AdamW4bit``, ``AdamWFp8`` and their Adam twins). memfit
does not write an optimizer: it makes the user's optimizer step through torchao's, so that
everything the user holds keeps working:

* the torchao optimizer shares the user's ``param_groups`` list and ``state`` dict (the same
  objects): learning rates, betas, epsilon, weight decay, AMSGrad and every parameter group are
  the user's, an LR scheduler's changes reach it, and ``optimizer.state_dict()`` holds the
  quantized moments (torchao's tensor subclasses);
* ``optimizer.step`` (an instance attribute, removed on undo) runs torchao's step. torchao keeps
  each group's learning rate as a CPU tensor, so the applier turns the user's ``lr`` floats into
  tensors (schedulers then ``fill_`` them) and back into floats on undo;
* moments that are plain tensors when a step starts (state from before ``memfit.apply``, or
  loaded with ``optimizer.load_state_dict``) are quantized then, as torchao would have created
  them. Undo turns quantized moments back into plain tensors of the parameter's dtype.

``PureBF16(stochastic_round=True)`` steps AdamW through torchao's ``_AdamW`` the same way
(full-precision state in the parameter's dtype, stochastic rounding to bf16), or adds stochastic
rounding to the low-bit optimizer when both are planned.
"""

from __future__ import annotations

import functools
import importlib
import types
import weakref
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from memfit.errors import InvalidInputError, MemfitError
from memfit.import_notices import torchao_enum_notices_muted
from memfit.installed import installed_version
from memfit.step.context import ApplyContext
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn
from memfit.techniques import LOW_BIT_KINDS, LowBitOptimizer

__all__ = [
    "apply_low_bit_optimizer",
    "check_adam",
    "use_torchao",
    "torchao_optim",
    "TORCHAO_CLASSES",
    "INSTALL",
]

INSTALL = 'pip install "memfit[torchao]"'
_WITHOUT = "leave low_bit_optimizer and pure_bf16 out of --allow"
_TORCHAO_TABLE = "https://github.com/pytorch/ao/issues/2919"

TORCHAO_CLASSES = {
    ("8bit", True): "AdamW8bit",
    ("4bit", True): "AdamW4bit",
    ("fp8", True): "AdamWFp8",
    ("8bit", False): "Adam8bit",
    ("4bit", False): "Adam4bit",
    ("fp8", False): "AdamFp8",
    (None, True): "_AdamW",  # full-precision state, for stochastic rounding alone
}
"""torchao.optim's class for (``LowBitOptimizer.kind`` or None, decoupled weight decay)."""

_MOMENTS = {"exp_avg": True, "exp_avg_sq": False, "max_exp_avg_sq": False}  # name -> signed

# optimizers stepping through torchao, and the settings they were given
_DELEGATED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Any] = weakref.WeakKeyDictionary()


def torchao_optim(feature: str) -> types.ModuleType:
    """``torchao.optim``, imported on first use (an optional dependency).

    Raises:
        MemfitError: torchao is not installed, or fails to import beside this torch (as 0.18
            does beside torch 2.6); names the fix.
    """
    try:  # optional: only low-bit and stochastically rounded plans need it
        with torchao_enum_notices_muted():
            return importlib.import_module("torchao.optim")
    except ImportError as error:
        raise MemfitError(
            f"{feature} steps through torchao's optimizers, and torchao is not installed "
            f"({error}); install it with '{INSTALL}', or plan without it ({_WITHOUT})"
        ) from None
    except Exception as error:  # installed, built for another torch: it fails while importing
        release = installed_version("torchao") or "(version unknown)"
        raise MemfitError(
            f"{feature} steps through torchao's optimizers, and torchao {release} fails to "
            f"import beside torch {torch.__version__} "
            f"({type(error).__name__}: {error}); each torchao release is built for one torch "
            f"release (torchao's compatibility table: {_TORCHAO_TABLE}): install the one for "
            f"this torch, or plan without it ({_WITHOUT})"
        ) from error


@register_applier(LowBitOptimizer, check_optimizer=lambda opt: check_adam(opt, "LowBitOptimizer"))
def apply_low_bit_optimizer(
    model: nn.Module, technique: LowBitOptimizer, context: ApplyContext
) -> UndoFn:
    """Record the kind in the context and add ``use_torchao`` to the optimizer's changes.

    Known limitations:
        * Adam and AdamW only (``maximize``, ``capturable`` and ``differentiable`` refused);
          their ``foreach``/``fused`` flags no longer matter: torchao compiles its own kernel
          per parameter shape (``torch.compile`` on the first steps).
        * Parameter groups added after ``memfit.apply`` must give ``lr`` as a tensor.
        * Moments that existed before ``memfit.apply`` are quantized at the next step, and
          undo turns quantized moments back into plain tensors: undo restores the optimizer
          exactly only if no step ran in between.

    Raises:
        InvalidInputError: an unknown kind, a block size that is not a positive integer, or
            the plan has LowBitOptimizer twice.
        MemfitError: torchao is not installed (the message names the fix).
    """
    if technique.kind not in LOW_BIT_KINDS:
        raise InvalidInputError(
            f"LowBitOptimizer(kind={technique.kind!r}): kind must be one of "
            f"{', '.join(LOW_BIT_KINDS)}"
        )
    block = technique.block_size
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise InvalidInputError(
            f"LowBitOptimizer(block_size={block!r}) must be a positive integer, or None for "
            f"torchao's default"
        )
    if context.low_bit is not None:
        raise InvalidInputError("the plan has LowBitOptimizer twice; keep one")
    torchao_optim("LowBitOptimizer")
    context.low_bit = (technique.kind, block)
    change = functools.partial(use_torchao, context=context)
    context.optimizer_changes.append(change)

    def undo() -> None:
        context.optimizer_changes.remove(change)
        context.low_bit = None

    return undo


def check_adam(optimizer: object, feature: str) -> None:
    """Raise unless ``optimizer`` can step through torchao's Adam (nothing is changed).

    Raises:
        InvalidInputError: not a ``torch.optim.Adam``/``AdamW``, or a group with
            ``maximize``, ``capturable`` or ``differentiable``.
    """
    fix = f"plan without {feature}, or use torch.optim.Adam/AdamW"
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        raise InvalidInputError(
            f"{feature} steps torch.optim.Adam and AdamW through torchao, not a "
            f"{type(optimizer).__name__}; {fix}"
        )
    assert isinstance(optimizer, torch.optim.Optimizer)
    for group in optimizer.param_groups:
        for flag in ("maximize", "capturable", "differentiable"):
            if group.get(flag):
                raise InvalidInputError(
                    f"{feature}: the optimizer has {flag}=True, which torchao's Adam does not "
                    f"support; {fix} without {flag}"
                )


def use_torchao(optimizer: torch.optim.Optimizer, *, context: ApplyContext) -> UndoFn:
    """Make ``optimizer`` step through torchao, as ``context`` says (``context.low_bit``,
    ``context.stochastic_round``); the returned callable makes it step as before.

    Runs once per optimizer: ``LowBitOptimizer`` and ``PureBF16(stochastic_round=True)`` both
    add it, and the second call finds the optimizer delegated already.

    Raises:
        InvalidInputError: see ``check_adam``; the optimizer is unchanged then.
        MemfitError: torchao is not installed.
    """
    if optimizer in _DELEGATED:
        return lambda: None
    feature = "LowBitOptimizer" if context.low_bit else "PureBF16(stochastic_round=True)"
    check_adam(optimizer, feature)
    decoupled = isinstance(optimizer, torch.optim.AdamW) or any(
        g.get("decoupled_weight_decay") for g in optimizer.param_groups
    )
    kind, block = context.low_bit or (None, None)
    name = TORCHAO_CLASSES.get((kind, decoupled))
    if name is None:
        raise InvalidInputError(
            "PureBF16(stochastic_round=True) rounds through torchao's AdamW (decoupled weight "
            "decay), not Adam's L2 weight decay; use torch.optim.AdamW, or stochastic_round=False"
        )
    cls = getattr(torchao_optim(feature), name)
    delegate = _build(cls, optimizer, block, context.stochastic_round)
    lrs = [group["lr"] for group in optimizer.param_groups]
    _lr_tensors(optimizer.param_groups)
    previous = optimizer.__dict__.get("step")
    scheduled = bool(getattr(previous, "_wrapped_by_lr_sched", False))
    step: Any = functools.partial(_step, delegate=delegate, scheduled=scheduled, plain={})
    if scheduled:  # an LR scheduler wrapped the step: it checks for its mark
        step._wrapped_by_lr_sched = True
    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]
    _DELEGATED[optimizer] = delegate
    return functools.partial(_restore, weakref.ref(optimizer), previous, lrs)


def _build(
    cls: type, optimizer: torch.optim.Optimizer, block: int | None, stochastic: bool
) -> torch.optim.Optimizer:
    """torchao's optimizer over the same parameters, then sharing the user's groups and state."""
    first = optimizer.param_groups[0]
    options: dict[str, Any] = dict(
        lr=float(first["lr"]),
        betas=first["betas"],
        eps=first["eps"],
        weight_decay=first["weight_decay"],
        amsgrad=first.get("amsgrad", False),
        bf16_stochastic_round=stochastic,
    )
    if block is not None:
        options["block_size"] = block
    params = [p for group in optimizer.param_groups for p in group["params"]]
    delegate = cls(params, **options)
    delegate.param_groups = optimizer.param_groups  # the same list and dicts
    delegate.state = optimizer.state
    return delegate


def _step(
    optimizer: torch.optim.Optimizer,
    closure: Any = None,
    *,
    delegate: Any,
    scheduled: bool,
    plain: dict[int, bool],
) -> Any:
    """``optimizer.step`` while delegated: quantize the plain moments that torchao would have
    quantized, then torchao's step. ``plain`` caches, by parameter, whether torchao keeps its
    moments plain (small tensors)."""
    if scheduled:  # the LR scheduler's wrapper this replaces did so
        optimizer._opt_called = True  # type: ignore[attr-defined]
    # load_state_dict replaces both (its learning rates as floats): share the current ones
    delegate.param_groups, delegate.state = optimizer.param_groups, optimizer.state
    _lr_tensors(optimizer.param_groups)
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if param.grad is None or not state:
                continue
            moments = [n for n in _MOMENTS if _is_plain(state.get(n))]
            if moments and not plain.setdefault(id(param), _kept_plain(delegate, param)):
                _quantize(delegate, param, state, moments)
    return delegate.step(closure)


def _lr_tensors(groups: list[dict[str, Any]]) -> None:
    """torchao reads each group's learning rate as a float32 CPU tensor."""
    for group in groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32)


def _is_plain(moment: Any) -> bool:
    return isinstance(moment, torch.Tensor) and not is_traceable_wrapper_subclass(moment)


def _kept_plain(delegate: Any, param: torch.Tensor) -> bool:
    """Whether torchao keeps ``param``'s moments as plain tensors (asked on the meta device:
    nothing is allocated)."""
    return _is_plain(delegate._new_buffer(torch.empty_like(param, device="meta"), True))


def _quantize(delegate: Any, param: torch.Tensor, state: dict[str, Any], names: list[str]) -> None:
    for name in names:
        fresh = delegate._new_buffer(param, _MOMENTS[name])  # torchao's own layout
        fresh.copy_(state[name].to(param.dtype))
        state[name] = fresh
    step = state.get("step")
    if isinstance(step, torch.Tensor) and step.device.type != "cpu":
        state["step"] = step.to("cpu", torch.float32)  # torchao counts on the host


def _restore(ref: weakref.ref[torch.optim.Optimizer], previous: Any, lrs: list[Any]) -> None:
    optimizer = ref()
    if optimizer is None:
        return
    _DELEGATED.pop(optimizer, None)
    if previous is None:
        optimizer.__dict__.pop("step", None)
    else:
        optimizer.step = previous  # type: ignore[method-assign]
    for group, lr in zip(optimizer.param_groups, lrs, strict=False):
        current = group["lr"]
        if isinstance(lr, torch.Tensor) or not isinstance(current, torch.Tensor):
            continue
        unchanged = float(current) == float(torch.tensor(lr, dtype=torch.float32))
        group["lr"] = lr if unchanged else float(current)  # a scheduler's, in float32
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if not state:
                continue
            for name in _MOMENTS:
                moment = state.get(name)
                if isinstance(moment, torch.Tensor) and is_traceable_wrapper_subclass(moment):
                    state[name] = moment.dequantize(param.dtype)
            step = state.get("step")
            on_device = group.get("fused") or group.get("capturable")
            if on_device and isinstance(step, torch.Tensor):
                state["step"] = step.to(param.device, torch.float32)
