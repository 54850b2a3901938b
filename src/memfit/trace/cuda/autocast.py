"""CUDA autocast on CPU tensors: the casts the GPU would make, traced on fake CPU tensors.

A CPU build of torch cannot make CUDA tensors, and CPU autocast casts a different set of operators
than CUDA autocast (it keeps layer_norm and softmax in bf16, promotes cat and stack...). While
``cuda_autocast(dtype)`` is active, the AutocastCPU dispatch key runs CUDA's policy instead:
operators without a CUDA autocast kernel fall through, and those with one cast their inputs as
``autocast_mode.cpp`` does (including the cache of low-precision copies of leaf parameters, kept
until the outermost autocast region exits and made with grad enabled where this torch's are). The
kernels are registered through ``torch.library`` and removed when the context exits.

Known limitations:
    * Model code that calls ``torch.autocast("cuda", enabled=False)`` explicitly does not disable
      the emulated autocast (code that uses ``x.device.type``, as Hugging Face does, works).
    * Operators registered for AutocastCUDA but missing from the policy table fall through
      (no cast); ``unknown_ops()`` lists them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_unflatten

from memfit.trace.cuda.autocast_policy import (
    CUDA_AUTOCAST_POLICY,
    CastPolicy,
    registered_cuda_autocast_ops,
)

__all__ = ["cuda_autocast", "cuda_autocast_policy", "unknown_ops"]

_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)
# fp32_append_dtype: autocast redispatches norm to the overload that takes an output dtype
_APPEND_DTYPE_OVERLOAD = {
    "norm.Scalar": torch.ops.aten.norm.ScalarOpt_dtype,
    "norm.ScalarOpt_dim": torch.ops.aten.norm.ScalarOpt_dim_dtype,
}
_LOCK = threading.Lock()


def unknown_ops() -> set[str]:
    """AutocastCUDA operators of this torch that the policy table does not know."""
    return registered_cuda_autocast_ops() - set(CUDA_AUTOCAST_POLICY)


@functools.cache
def cached_casts_keep_grad() -> bool:
    """Whether this torch's autocast makes its cached weight copies with grad enabled.

    Since pytorch#165068 (torch 2.10) ``cached_cast`` makes the copy of a weight under
    ``enable_grad`` even inside ``no_grad`` (so that a cache filled during evaluation still
    trains), and caches nothing under ``inference_mode``. It matters for memory: ``matmul``
    folds a batched input into one matrix (a contiguous copy of a strided input) when the
    weight requires grad, and multiplies batch by batch otherwise. Read from the real CPU
    autocast, before the emulated policy replaces its kernels.
    """
    with _disable_current_modes():
        weight = torch.ones(2, 2, requires_grad=True)
    seen: list[bool] = []

    class _Seen(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.ops.aten.mm.default:
                seen.append(args[1].requires_grad)
            return func(*args, **(kwargs or {}))

    with (
        _disable_current_modes(),  # not recorded, not fake
        torch.no_grad(),
        torch.autocast("cpu", dtype=torch.bfloat16),
        _Seen(),
    ):
        torch.mm(torch.ones(2, 2), weight)
    return bool(seen and seen[0])


class _WeightCache:
    """Low-precision copies of leaf tensors that require grad, as autocast's ``cached_cast``."""

    def __init__(self, keep_grad: bool) -> None:
        self.copies: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.keep_grad = keep_grad  # cached_casts_keep_grad()

    def cast(self, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        cacheable = (
            tensor.dtype == torch.float32
            and tensor.requires_grad
            and tensor.is_leaf
            and not tensor._is_view()
            and torch.is_autocast_cache_enabled()
            and not (self.keep_grad and torch.is_inference_mode_enabled())
        )
        if not cacheable:
            return tensor.to(dtype)
        hit = self.copies.get(id(tensor))
        if hit is not None and hit[0] is tensor:
            return hit[1]
        with torch.enable_grad() if self.keep_grad else contextlib.nullcontext():
            copy = tensor.to(dtype)
        self.copies[id(tensor)] = (tensor, copy)
        return copy


def _eligible(value: Any) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dtype != torch.float64
    )


def _make_kernel(op: Any, policy: CastPolicy, dtype: torch.dtype, cache: _WeightCache) -> Any:
    def cast_all(args: Any, kwargs: Any, to: torch.dtype) -> tuple[Any, Any]:
        def cast(value: Any) -> Any:
            if _eligible(value) and value.dtype != to:
                return cache.cast(value, to) if to == dtype else value.to(to)
            return value

        # the last argument first: the C++ wrapper casts its arguments in a call's argument
        # list, which GCC evaluates right to left (a linear's bias, weight, then input, as
        # recorded on the H200); the order decides which cached blocks the copies take
        leaves, spec = tree_flatten((args, kwargs))
        cast_leaves = [cast(value) for value in reversed(leaves)][::-1]
        return tree_unflatten(cast_leaves, spec)  # type: ignore[no-any-return]

    def kernel(keyset: Any, *args: Any, **kwargs: Any) -> Any:
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            if policy is CastPolicy.LOWER_PRECISION:
                args, kwargs = cast_all(args, kwargs, dtype)
            elif policy is CastPolicy.FP32:
                args, kwargs = cast_all(args, kwargs, torch.float32)
            elif policy is CastPolicy.PROMOTE:
                widest = dtype
                for value in tree_flatten((args, kwargs))[0]:
                    if _eligible(value) and value.dtype == torch.float32:
                        widest = torch.float32
                args, kwargs = cast_all(args, kwargs, widest)
            elif policy is CastPolicy.FP32_SET_OPT_DTYPE:
                first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if _eligible(first):
                    args, kwargs = _set_dtype(op, args, kwargs, torch.float32)
            elif policy is CastPolicy.FP32_APPEND_DTYPE:
                first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if _eligible(first):
                    op_with_dtype = _APPEND_DTYPE_OVERLOAD[str(op.name()).split("::")[-1]]
                    return op_with_dtype(*args, **kwargs, dtype=torch.float32)
            elif policy is CastPolicy.BANNED:
                raise RuntimeError(
                    f"{op} is unsafe to autocast on CUDA (it raises there): compute it on "
                    f"logits with binary_cross_entropy_with_logits, or outside autocast"
                )
            return op(*args, **kwargs)

    return kernel


def _set_dtype(op: Any, args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
    """Set the op's ``dtype`` argument unless the caller gave one (autocast's set_opt_dtype)."""
    names = [argument.name for argument in op._schema.arguments]
    index = names.index("dtype")
    if index < len(args):
        if args[index] is None:
            args = (*args[:index], dtype, *args[index + 1 :])
        return args, kwargs
    if kwargs.get("dtype") is None:
        kwargs = {**kwargs, "dtype": dtype}
    return args, kwargs


def _resolve(name: str) -> Any:
    """``"norm.Scalar"`` -> ``torch.ops.aten.norm.Scalar``."""
    base, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, base)
    return getattr(packet, overload or "default")


@contextlib.contextmanager
def cuda_autocast_policy(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Install CUDA's autocast policy on the AutocastCPU key (it acts where CPU autocast is on).

    Within the context, ``torch.autocast("cpu", dtype=dtype)`` casts as CUDA autocast would,
    including in regions PyTorch enters itself (checkpoint recomputation), and the cache of
    low-precision weight copies is dropped whenever the outermost autocast region exits, as
    ``torch.clear_autocast_cache`` does for the real cache.
    """
    registered = registered_cuda_autocast_ops()
    cpu_only = {
        name.removeprefix("aten::")
        for name in torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCPU")
        if name.startswith("aten::")
    } - registered
    cache = _WeightCache(cached_casts_keep_grad())
    original_clear = torch.clear_autocast_cache

    def clear_both() -> None:
        cache.copies.clear()
        original_clear()

    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        library = torch.library.Library("aten", "IMPL")
        try:
            for name in cpu_only:
                library.impl(name, torch.library.fallthrough_kernel, "AutocastCPU")
            for name in registered:
                policy = CUDA_AUTOCAST_POLICY.get(name)
                if policy is None:
                    continue
                op = _resolve(name)
                library.impl(
                    name, _make_kernel(op, policy, dtype, cache), "AutocastCPU", with_keyset=True
                )
            torch.clear_autocast_cache = clear_both
            with _cuda_autocast_state_reported():
                yield
        finally:
            torch.clear_autocast_cache = original_clear
            cache.copies.clear()
            library._destroy()


@contextlib.contextmanager
def _cuda_autocast_state_reported() -> Iterator[None]:
    """``torch.is_autocast_enabled()`` and ``torch.get_autocast_dtype("cuda")`` report the
    emulated CUDA autocast (CPU autocast's state), as the GPU run sees its own: modules decide
    by them (``nn.TransformerEncoderLayer`` and ``nn.MultiheadAttention`` leave their inference
    fast path under autocast; Hugging Face models read the autocast dtype)."""
    enabled, dtype, gpu_dtype = (
        torch.is_autocast_enabled,
        torch.get_autocast_dtype,
        torch.get_autocast_gpu_dtype,
    )

    def is_enabled(device_type: str = "cuda") -> bool:
        return enabled("cpu" if device_type == "cuda" else device_type)

    def autocast_dtype(device_type: str) -> torch.dtype:
        return dtype("cpu" if device_type == "cuda" else device_type)

    torch.is_autocast_enabled = is_enabled  # type: ignore[assignment]
    torch.get_autocast_dtype = autocast_dtype  # type: ignore[assignment]
    torch.get_autocast_gpu_dtype = lambda: dtype("cpu")  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.is_autocast_enabled = enabled  # type: ignore[assignment]
        torch.get_autocast_dtype = dtype  # type: ignore[assignment]
        torch.get_autocast_gpu_dtype = gpu_dtype  # type: ignore[assignment]


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """Run CPU tensors under CUDA's autocast policy, with autocast dtype ``dtype``.

    Example:
        >>> with cuda_autocast(torch.bfloat16):
        ...     logits = model(input_ids)  # fake CPU tensors, cast as on a GPU
    """
    with cuda_autocast_policy(dtype), torch.autocast("cpu", dtype=dtype):
        yield
