"""The Checkpoint applier: activation checkpointing of named modules, full or selective.

Each matched module gets an instance attribute ``forward`` that runs the class's forward under
``torch.utils.checkpoint.checkpoint(use_reentrant=False)``. The module objects, their names and
the state_dict keys stay as they were (unlike wrapper modules, which add a level to every name),
and undo deletes the attribute so that the class's ``forward`` is back.

Selective checkpointing keeps the outputs of the operators named in ``Checkpoint.save`` and
recomputes the rest, through ``create_selective_checkpoint_contexts`` and PyTorch's own
``CheckpointPolicy``.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from memfit.apply.forward_patch import replace_forward
from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.overhead import note as note_overhead
from memfit.step.overhead import scope as overhead_scope
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn, run_in_reverse
from memfit.structure.blocks import find_blocks
from memfit.structure.matching import match_modules
from memfit.techniques import Checkpoint

__all__ = ["apply_checkpoint", "save_policy", "is_checkpointed"]

ContextFn = Callable[[], tuple[contextlib.AbstractContextManager[Any], Any]]


@register_applier(Checkpoint)
def apply_checkpoint(model: nn.Module, technique: Checkpoint, context: ApplyContext) -> UndoFn:
    """Checkpoint every module whose name matches one of ``technique.modules``.

    Checkpointing is active only in training mode with gradients enabled; in ``eval()`` or
    under ``torch.no_grad()`` the module runs its plain forward. Keyword arguments are passed
    through. Dropout draws the same numbers in the recomputation (RNG state is preserved).

    Known limitations:
        - Modules containing BatchNorm: the recomputation would update the running statistics
          a second time (PyTorch's checkpoint re-runs the forward as is); memfit saves them
          before the recomputation and restores them after, so they are updated once per
          forward as without checkpointing.
        - Other modules that change state in forward (counters, caches, in-place updates of
          buffers) do so twice per step. Selective checkpointing also needs the recomputation
          to run the same operators as the forward did; PyTorch raises when it does not.
        - A module called several times per step is checkpointed on every call.
        - The recomputation reads list and dict arguments as they were at the call (copies),
          so a caller may extend them afterwards (DenseNet's feature lists); objects of other
          types it passes are read as they are in backward.
        - ``copy.deepcopy`` of a checkpointed model gives a checkpointed copy that
          ``undo_all`` does not know; ``pickle``/``torch.save`` of the whole model object is
          not supported while applied (undo first; ``state_dict`` is unaffected).
        - The root module is never matched (checkpointing the whole model saves nothing).
        - Hugging Face models get ``config.use_cache = False`` while applied, as their own
          gradient checkpointing does: a KV cache filled in forward would be filled again by
          the recomputation (selective checkpointing then fails; full checkpointing keeps every
          layer's keys and values for nothing).

    Raises:
        InvalidInputError: a pattern matches no module (the message lists close names and the
            blocks ``find_blocks`` finds), a ``save`` name is not an operator, or a module is
            already checkpointed.
    """
    if not technique.modules:
        raise InvalidInputError(
            "Checkpoint(modules=()) names no module; pass name patterns such as "
            f"{_blocks_hint(model)}"
        )
    context_fn = _selective_context_fn(technique.save) if technique.save else None
    matched = match_modules(
        model, technique.modules, what="Checkpoint", hint=lambda: _blocks_hint(model)
    )
    for name, module in matched:
        if is_checkpointed(module):
            raise InvalidInputError(
                f"module {name!r} is already checkpointed by memfit; list each module in one "
                f"Checkpoint technique, or undo the earlier plan first (plan.undo(model))"
            )
    _warn_nested([name for name, _ in matched])
    if _hf_checkpointing(model):
        warnings.warn(
            "Hugging Face activation checkpointing is also on, so layers are checkpointed twice; "
            "call model.activation_checkpointing_disable() (gradient_checkpointing_disable() in "
            "transformers < 5) and let the plan choose",
            stacklevel=3,
        )
    undos = [_wrap(module, context_fn) for _, module in matched]
    undos.insert(0, _without_kv_cache(model))

    return functools.partial(run_in_reverse, undos)


def is_checkpointed(module: nn.Module) -> bool:
    """Whether memfit's checkpointed forward is installed on ``module``."""
    return _options_of(module.__dict__.get("forward")) is not None


def save_policy(save: tuple[str, ...]) -> Callable[..., CheckpointPolicy]:
    """The selective-checkpoint policy: MUST_SAVE the listed operators, PREFER_RECOMPUTE others.

    Args:
        save: operator names: ``"mm"`` names ``aten::mm`` (any overload); ``"ns::op"`` or
            ``"ns.op"`` names an operator of another namespace (custom kernels).
    """
    wanted = {_qualified(name) for name in save}

    def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
        note_overhead("selective_op")  # the step-time model prices this Python per operator
        qualified = getattr(getattr(op, "overloadpacket", op), "_qualified_op_name", "")
        if qualified in wanted:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


@dataclass(frozen=True)
class _Options:
    """What a checkpointed forward needs; shared, never refers to the module."""

    previous: Any
    """The instance ``forward`` the module had before (another library's), or None."""
    context_fn: ContextFn | None
    preserve_batchnorm: bool


def _checkpointed_forward(options: _Options, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = options.previous
    if forward is None:
        forward = types.MethodType(type(module).forward, module)
    if not (module.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    function = functools.partial(forward, **kwargs) if kwargs else forward
    if _holds_containers(args, kwargs) and not torch.compiler.is_compiling():
        function = _recomputed_as_called(forward, args, kwargs)
    note_overhead("checkpoint_region")  # the step-time model prices checkpoint's own Python
    context_fn = options.context_fn
    if options.preserve_batchnorm:
        context_fn = functools.partial(_with_batchnorm_restore, module, options.context_fn)
    with overhead_scope("checkpoint_op"):  # and its Python per operator of the region
        if context_fn is None:
            return checkpoint(function, *args, use_reentrant=False)
        return checkpoint(function, *args, use_reentrant=False, context_fn=context_fn)


def _recomputed_as_called(
    forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[..., Any]:
    """``forward`` on ``args`` the first time, and on copies of its lists and dicts as they
    were at the call when checkpoint recomputes it.

    PyTorch's checkpoint keeps the argument objects and recomputes from them in backward; a
    caller that appends to a list after passing it (torchvision's DenseNet hands each layer the
    growing list of earlier features) would have the recomputation read more than the forward
    did: a shape error, or, where the layer reads ``features[-1]``, other values and silently
    wrong gradients. The forward itself gets the caller's objects, so what it appends to them
    stays visible to the caller.
    """
    at_call = _containers_copied(args), _containers_copied(kwargs)
    calls = 0

    def run(*_: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return forward(*args, **kwargs)
        return forward(*at_call[0], **at_call[1])

    return run


def _holds_containers(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    values = (*args, *kwargs.values())
    return any(type(v) in (list, dict) or (type(v) is tuple and _holds_containers(v, {}))
               for v in values)  # fmt: skip


def _containers_copied(value: Any) -> Any:
    """Plain lists and dicts (nested in plain tuples, lists and dicts too) copied; the rest,
    tensors and subclasses (a model's output dataclass) included, the same objects."""
    if type(value) is list:
        return [_containers_copied(v) for v in value]
    if type(value) is dict:
        return {k: _containers_copied(v) for k, v in value.items()}
    if type(value) is tuple:
        return tuple(_containers_copied(v) for v in value)
    return value


def _wrap(module: nn.Module, context_fn: ContextFn | None) -> UndoFn:
    options = _Options(
        previous=module.__dict__.get("forward"),
        context_fn=context_fn,
        preserve_batchnorm=any(_tracks_stats(m) for m in module.modules()),
    )
    # A bound method: copy.deepcopy rebinds it to the copy (see Known limitations).
    return replace_forward(
        module,
        functools.partial(_checkpointed_forward, options),
        f"the forward of a {type(module).__name__} was replaced after memfit checkpointed it; "
        f"memfit left it alone",
    )


def _hf_checkpointing(model: nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new, old name
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _without_kv_cache(model: nn.Module) -> UndoFn:
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not True:
        return lambda: None
    config.use_cache = False  # type: ignore[union-attr]

    def undo() -> None:
        config.use_cache = True  # type: ignore[union-attr]

    return undo


def _options_of(forward: Any) -> _Options | None:
    func = getattr(forward, "__func__", None)
    if isinstance(func, functools.partial) and func.func is _checkpointed_forward:
        options = func.args[0]
        assert isinstance(options, _Options)
        return options
    return None


def _selective_context_fn(save: tuple[str, ...]) -> ContextFn:
    for name in save:
        if not _operator_exists(_qualified(name)):
            known = {n.split(".")[0] for n in torch._C._dispatch_get_all_op_names()}
            close = difflib.get_close_matches(_qualified(name), sorted(known), n=5)
            raise InvalidInputError(
                f"Checkpoint save name {name!r} is not a registered operator; close names: "
                f"{', '.join(c.removeprefix('aten::') for c in close) or 'none'}. Use ATen "
                f"overload packet names such as 'mm', 'addmm' or "
                f"'_scaled_dot_product_flash_attention', or 'namespace::op' for custom operators"
            )
    return functools.partial(create_selective_checkpoint_contexts, save_policy(save))


def _operator_exists(qualified: str) -> bool:
    namespace, _, name = qualified.partition("::")
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _qualified(name: str) -> str:
    if "::" in name:
        return name
    if "." in name:
        namespace, _, op = name.partition(".")
        return f"{namespace}::{op}"
    return f"aten::{name}"


def _tracks_stats(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats


def _with_batchnorm_restore(
    module: nn.Module, inner: ContextFn | None
) -> tuple[contextlib.AbstractContextManager[Any], contextlib.AbstractContextManager[Any]]:
    forward_ctx, recompute_ctx = inner() if inner is not None else (None, None)
    return (
        forward_ctx if forward_ctx is not None else contextlib.nullcontext(),
        _restoring_batchnorm(module, recompute_ctx),
    )


@contextlib.contextmanager
def _restoring_batchnorm(module: nn.Module, inner: Any) -> Iterator[None]:
    """Around the recomputation: keep BatchNorm statistics as the first forward left them.

    The snapshot is taken outside ``inner`` (a selective-checkpoint dispatch mode), so that the
    copies are not seen by its operator bookkeeping.
    """
    stats = [
        (buffer, buffer.clone())
        for m in module.modules()
        if _tracks_stats(m)
        for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)
        if isinstance(buffer, torch.Tensor)
    ]
    try:
        with inner if inner is not None else contextlib.nullcontext():
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in stats:
                buffer.copy_(saved)


def _warn_nested(names: list[str]) -> None:
    nested = [n for n in names if any(n.startswith(f"{o}.") for o in names)]
    if nested:
        warnings.warn(
            f"Checkpoint matches modules inside other matched modules ({', '.join(nested[:3])}"
            f"{', ...' if len(nested) > 3 else ''}): their forward is recomputed twice in "
            f"backward; match only the outer ones",
            stacklevel=3,
        )


def _blocks_hint(model: nn.Module) -> str:
    blocks = find_blocks(model)
    if not blocks:
        return "'layers.*' (memfit found no repeated blocks in this model)"
    shown = ", ".join(repr(b) for b in blocks[:4])
    more = f", ... ({len(blocks)} blocks)" if len(blocks) > 4 else ""
    return f"the blocks memfit.structure.blocks.find_blocks(model) finds: {shown}{more}"
