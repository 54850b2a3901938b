"""Saved-tensor hooks that keep no copy twice: how the step runs LeanAutocast and FusedGatedMLP.

Autograd keeps, from forward to backward, tensors that are copies of others it keeps already or
of tensors that outlive the step anyway. ``lean_saving`` is a
``torch.autograd.graph.saved_tensors_hooks`` pair that stores a recipe for those instead:

* a weight cast (``LeanAutocast``): under autocast, ``F.linear(x, w)`` runs on
  ``w.to(bf16)``, kept for backward (the input's gradient needs it): half a copy of the
  weights alive until backward has used it (LLaMA-1B: 1.8 GiB). The hook keeps the float32
  parameter instead and backward casts it again (a memory-bound kernel). The step also turns
  autocast's weight cache off, so that no copy outlives its operator in forward either.
* a repeated activation cast (``LeanAutocast``): an input given to several matrix products
  (LLaMA's q, k and v projections of one normed hidden state) is cast once per product, and
  each product keeps its own copy. The hook keeps the first and stores the others as it.
* a gated product (``FusedGatedMLP``): ``act(gate) * up`` is kept by the down projection while
  ``gate`` and ``up`` are kept by the product's own backward; the hook stores the two factors
  and backward recomputes the product (two elementwise kernels).

Each recipe gives back the same values (casts and elementwise kernels are deterministic), so
gradients are bit-identical. Inside checkpointed modules checkpointing's own hooks take over.

The hooks run in the forward of the lean modules (``lean_modules``: ``LeanAutocast``'s, the whole
model by default, and ``FusedGatedMLP``'s): Python for every tensor autograd saves there, in
forward and again in backward, and more for each recipe, which the step-time model prices
(``Calibration.lean_tensor_s``, ``lean_recipe_s``). On a step the CPU bounds that is step time:
on H100s the Qwen2 shape (973 tensors, 241 recipes) ran 15-21% slower with the whole model
lean; with one lean block no slower with the hooks pushed by the block (40 tensors), 10% with
them around the whole forward, as before PyTorch 2.8 (bench/results/lean_scope_probe_h100_run*).

Known limitations:
    * A parameter changed in place between forward and backward (its version counter moves)
      raises rather than giving wrong gradients.
    * Copies made under ``torch.no_grad()`` have no autograd history and are kept as they are.
    * Under ``torch.compile`` the compiler decides what is kept: measured on an H200, a
      compiled LLaMA-1B plan with these techniques took 23.45 GiB against the 20.78 GiB it took
      eager (bench/results/frontier_compile_plans_h200.json). The step warns; plan with
      ``allow`` leaving out ``lean_autocast`` and ``fused_gated_mlp`` for compiled models.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memfit.errors import MemfitError
from memfit.step.overhead import note as note_overhead
from memfit.step.undo import UndoFn

__all__ = ["lean_saving", "lean_modules", "per_module", "recomputable", "warn_if_compiled"]

_LOW = (torch.bfloat16, torch.float16)
# .state: the _State of the innermost lean_saving, if any; .depth: lean modules running forward
_ACTIVE = threading.local()


@dataclass(frozen=True)
class _Recast:
    """A low-precision weight, kept as its float32 parameter."""

    param: torch.Tensor
    dtype: torch.dtype
    version: int


@dataclass(frozen=True)
class _View:
    """A saved tensor as the view ``(size, stride, offset)`` of what ``inner`` rebuilds."""

    inner: Any  # _Recast, _Recompute, or the tensor itself (an earlier copy)
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class _Recompute:
    """A saved tensor that ``function(*inputs)`` gives again; the inputs are kept anyway."""

    function: Callable[..., torch.Tensor]
    inputs: tuple[Any, ...]


@dataclass
class _State:
    weights: bool
    shared: bool
    scoped: bool  # weight and repeated casts only inside ``lean_modules``
    # weak references throughout, so that nothing here outlives what autograd keeps (inside a
    # checkpointed module autograd keeps none of these tensors)
    casts: dict[tuple[int, int, torch.dtype], tuple[Any, weakref.ref]] = field(default_factory=dict)
    # by id of the output: the output, the function and the inputs
    recipes: dict[int, tuple[weakref.ref, Callable[..., torch.Tensor], tuple]] = field(
        default_factory=dict
    )


def recomputable(output: torch.Tensor, function: Callable[..., torch.Tensor], *inputs: Any) -> None:
    """Tell the active ``lean_saving`` that ``output`` equals ``function(*inputs)``.

    Call it only for inputs that autograd keeps anyway (saved by the operator that made
    ``output``); outside ``lean_saving`` it does nothing.
    """
    state: _State | None = getattr(_ACTIVE, "state", None)
    if state is not None:
        held = tuple(weakref.ref(x) if isinstance(x, torch.Tensor) else x for x in inputs)
        state.recipes[id(output)] = (weakref.ref(output), function, held)


def _weight_of(base: torch.Tensor) -> torch.Tensor | None:
    """The float32 leaf that ``base`` is a plain dtype cast of, in the same layout."""
    node = base.grad_fn
    if node is None or node.name() != "ToCopyBackward0":
        return None
    param = getattr(node.next_functions[0][0], "variable", None)  # AccumulateGrad's leaf
    if not isinstance(param, torch.Tensor) or param.dtype != torch.float32:
        return None
    same_layout = (
        base.shape == param.shape
        and base.is_contiguous()
        and param.is_contiguous()
        and base.device == param.device
    )
    return param if same_layout else None


def _shared_cast(state: _State, base: torch.Tensor) -> torch.Tensor | None:
    """An earlier saved cast of the same tensor to the same dtype, if there is one.

    Two casts come from the same tensor when their autograd nodes point at the same output of
    the same node (an in-place change gives a tensor a new node, so a changed tensor never
    matches its earlier self).
    """
    node = base.grad_fn
    if node is None or node.name() != "ToCopyBackward0":
        return None
    source, index = node.next_functions[0]
    if source is None or source.name() == "AccumulateGrad":
        return None
    key = (id(source), index, base.dtype)
    earlier = state.casts.get(key)
    first = earlier[1]() if earlier is not None and earlier[0] is source else None
    if first is not None and first.shape == base.shape:
        return first
    state.casts[key] = (source, weakref.ref(base))
    return None


def _recompute(function: Callable[..., torch.Tensor], held: tuple) -> _Recompute | None:
    inputs = [x() if isinstance(x, weakref.ref) else x for x in held]
    if any(x is None for x in inputs):
        return None  # an input is gone: keep the tensor itself
    return _Recompute(function, tuple(inputs))


def _pack(state: _State, saved: torch.Tensor) -> Any:
    note_overhead("lean_tensor")  # this hook and its unpack: Python per saved tensor
    # recipes rebuild the tensor a saved view looks at; the view is taken again on unpack
    base = saved._base if saved._is_view() else saved
    if base is None:
        return saved
    recipe = state.recipes.get(id(base)) if state.recipes else None
    lean = base.dtype in _LOW and (not state.scoped or getattr(_ACTIVE, "depth", 0) > 0)
    if (recipe is None and not lean) or base.storage_offset() != 0 or not base.is_contiguous():
        return saved
    packed: Any = None
    if recipe is not None and recipe[0]() is base:
        packed = _recompute(recipe[1], recipe[2])
    elif lean:
        param = _weight_of(base) if state.weights else None
        if param is not None:
            packed = _Recast(param, base.dtype, param._version)
        elif state.shared:
            packed = _shared_cast(state, base)
    if packed is None:
        return saved
    note_overhead("lean_recipe")  # and its unpack's Python in backward (its kernels are priced)
    size, stride = tuple(saved.size()), tuple(saved.stride())
    return _View(packed, size, stride, int(saved.storage_offset()))


def _unpack(packed: Any) -> torch.Tensor:
    if not isinstance(packed, _View):
        return packed
    inner = packed.inner
    if isinstance(inner, _Recompute):
        with torch.no_grad():
            base = inner.function(*inner.inputs)
    elif isinstance(inner, _Recast):
        if inner.param._version != inner.version:
            raise MemfitError(
                f"LeanAutocast: a parameter of shape {tuple(inner.param.shape)} was changed "
                f"in place between forward and backward, so its saved copy cannot be cast "
                f"again; change weights only after backward, or drop LeanAutocast"
            )
        base = inner.param.detach().to(inner.dtype)
    else:
        base = inner  # the earlier cast, kept by its own operator
    return base.as_strided(packed.size, packed.stride, packed.offset)


# PyTorch's query of the innermost saved-tensor hooks (private; torch >= 2.8). With it each lean
# module pushes the hooks around its own forward, so that the rest of the step runs without
# them; without it the step runs its whole forward under them and counts the lean modules in.
_TOP_HOOKS = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
SCOPED_HOOKS = _TOP_HOOKS is not None


def per_module() -> bool:
    """Whether the lean modules push the hooks themselves (else the step, around forward)."""
    return SCOPED_HOOKS


def lean_modules(
    modules: Sequence[nn.Module], *, weights: bool = True, shared: bool = True
) -> UndoFn:
    """Make the casts saved while any of ``modules`` runs forward recipes; return the undo.

    A forward pre-hook and an always-called forward hook mark each module's forward. Where
    PyTorch tells which saved-tensor hooks are innermost (``per_module()``), a module that runs
    with none pushes ``lean_saving(weights=, shared=)`` for its forward; inside another lean
    module that one's hooks serve, and inside checkpointing or any other hooks nothing is
    pushed (those hooks decide what is saved, in forward and in recomputation). Otherwise the
    step runs ``lean_saving(scoped=True)`` around its forward, which stores weight and repeated
    casts only while a lean module runs.
    """
    enter = functools.partial(_enter_lean, weights, shared)
    handles = []
    for module in modules:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(_leave_lean, always_call=True))

    def undo() -> None:
        for handle in handles:
            handle.remove()

    return undo


def _enter_lean(weights: bool, shared: bool, module: nn.Module, args: Any) -> None:
    _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
    scope = None
    if per_module() and not torch.compiler.is_compiling() and _no_hooks_pushed():
        scope = lean_saving(weights=weights, shared=shared)
        scope.__enter__()
    _scopes().append(scope)


def _no_hooks_pushed() -> bool:
    return _TOP_HOOKS is not None and _TOP_HOOKS(False) is None


def _leave_lean(module: nn.Module, args: Any, output: Any) -> None:
    _ACTIVE.depth = max(0, getattr(_ACTIVE, "depth", 0) - 1)
    scopes = _scopes()
    scope = scopes.pop() if scopes else None
    if scope is not None:
        scope.__exit__(None, None, None)


def _scopes() -> list[Any]:
    scopes = getattr(_ACTIVE, "scopes", None)
    if scopes is None:
        scopes = _ACTIVE.scopes = []
    return scopes


@contextlib.contextmanager
def lean_saving(
    *, weights: bool = True, shared: bool = True, scoped: bool = False
) -> Iterator[None]:
    """Within, autograd keeps recipes for the copies above (all three kinds by default).

    Args:
        weights: store weight casts as their float32 parameters (the step must also run
            autocast with ``cache_enabled=False``).
        shared: store repeated casts of one activation once.
        scoped: store those two only while a module of ``lean_modules`` runs forward (gated
            products are stored wherever they are).
    """
    state = _State(weights, shared, scoped)
    outer = getattr(_ACTIVE, "state", None)
    _ACTIVE.state = state
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: _pack(state, t), _unpack):
            yield
    finally:
        _ACTIVE.state = outer
        state.casts.clear()
        state.recipes.clear()


_WARNED: weakref.WeakSet[nn.Module] = weakref.WeakSet()  # not ids: Python reuses those


def warn_if_compiled(module: nn.Module | None) -> None:
    """Warn once per model compiled with ``model.compile()``: the savings may not hold."""
    if module is None or getattr(module, "_compiled_call_impl", None) is None:
        return
    if module in _WARNED:
        return
    _WARNED.add(module)
    warnings.warn(
        "the model is compiled: torch.compile decides itself what is kept for backward, so "
        "LeanAutocast's and FusedGatedMLP's savings may not hold (a compiled LLaMA-1B plan "
        "took 2.7 GiB more than eager on an H200). For compiled models, plan with "
        'allow=("checkpoint", "micro_batch", "chunked_loss", "fused_activation")',
        stacklevel=4,
    )
