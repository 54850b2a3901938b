"""What kind of work each ATen operator is, and how much of it: the step-time model's inputs.

Every operator falls in one class, and its time is priced by that class's rule
(``memfit.cost.device``): matrix products, attention and convolutions by FLOPs (PyTorch's own
``torch.utils.flop_counter`` formulas) at a tensor-core rate; everything else by the bytes it
moves. The bytes are counted per class, as the kernels move them:

* pointwise, copies, norms, softmax, reductions: every input read once, every output written
  once;
* gathers (``embedding``, ``gather``, ``index_select``, ``nll_loss_forward``): the rows
  they pick, not the whole table they pick from;
* scatters into zeros (``embedding_dense_backward``, ``nll_loss_backward``, ``select_backward``,
  ``slice_backward``): the output written once (a zero fill), plus the values scattered;
* fills (``zeros``, ``ones``, ``full``, ``fill_``): the output written once; ``empty``-like
  allocations launch nothing;
* in-place operators (``add_``, the fused optimizer step): what they overwrite, read and
  written back; memfit's own operators (``torch.ops.memfit``) add their declared passes;
* views, metadata and aliasing operators launch nothing (they still cost host time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import flop_registry

from memfit.tensor_leaves import tensors_in

__all__ = ["OpWork", "CLASSES", "op_work", "classify"]

CLASSES = (
    "none",
    "matmul",
    "attention",
    "conv",
    "pointwise",
    "copy",
    "fill",
    "reduction",
    "norm",
    "batch_norm",
    "softmax",
    "gather",
    "scatter",
    "optimizer",
    "custom",
    "sync",
)

_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "_scaled_mm", "addmv", "mv", "dot"}
_CONV = {"convolution", "convolution_backward", "_convolution", "cudnn_convolution"}
_BATCH_NORM = {
    "native_batch_norm",
    "native_batch_norm_backward",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "cudnn_batch_norm",
    "cudnn_batch_norm_backward",
}
_NORM = {
    "native_layer_norm",
    "native_layer_norm_backward",
    "_fused_rms_norm",
    "_fused_rms_norm_backward",
    "native_group_norm",
    "native_group_norm_backward",
}
_SOFTMAX = {"_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data"}
_REDUCTION = {
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "argmax",
    "argmin",
    "prod",
    "norm",
    "linalg_vector_norm",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "logsumexp",
    "all",
    "any",
    "_foreach_norm",
}
_GATHER = {
    "embedding",
    "gather",
    "index_select",
    "index",
    "nll_loss_forward",
    "take_along_dim",
    "max_pool2d_with_indices",
}
_SCATTER = {
    "embedding_dense_backward",
    "nll_loss_backward",
    "select_backward",
    "slice_backward",
    "index_put",
    "index_put_",
    "_index_put_impl_",
    "scatter",
    "scatter_",
    "scatter_add",
    "scatter_add_",
    "index_add",
    "index_add_",
    "max_pool2d_with_indices_backward",
}
_COPY = {"_to_copy", "copy_", "clone", "cat", "stack", "constant_pad_nd", "_unsafe_view"}
_FILL = {"zeros", "ones", "full", "fill_", "zero_", "new_zeros", "new_ones", "new_full"}
_FILL |= {"zeros_like", "ones_like", "full_like", "scalar_tensor", "arange", "lift_fresh"}
_ALLOCATE = {"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"}
_SYNC = {"_local_scalar_dense", "nonzero", "item", "masked_select", "unique"}


@dataclass(frozen=True, slots=True)
class OpWork:
    """One operator call, as the step-time model sees it.

    Attributes:
        op: the overload's name (``"mm"``, ``"add.Tensor"``).
        kind: its class (``CLASSES``).
        flops: FLOPs of products, attention and convolutions (0 for the rest).
        bytes: bytes it reads and writes, by its class's rule.
        dtype: the dtype its tensor-core rate is that of (its first tensor argument's).
        kernels: kernels it launches (0 for views and allocations).
        shape: for matrix products, ``(batch, M, N, K)`` of ``[M, K] @ [K, N]``.
        tensors: tensors it takes (an optimizer step's Python walks them all).
    """

    op: str
    kind: str
    flops: float = 0.0
    bytes: int = 0
    dtype: torch.dtype = torch.float32
    kernels: int = 1
    shape: tuple[int, ...] = ()
    tensors: int = 0


def classify(func: Any) -> str:
    """The class of an ATen (or memfit) operator, by its name alone; ``"none"`` for views
    needs the call (``op_work``)."""
    name = func.__name__.split(".")[0]
    if func.namespace == "memfit":
        return "custom"
    if func.overloadpacket in flop_registry:
        if name in _MATMUL:
            return "matmul"
        return "conv" if name in _CONV else "attention"
    if name.startswith("_fused_adam") or name.startswith("_fused_sgd"):
        return "optimizer"
    if name.startswith("_foreach_") and name != "_foreach_norm":
        return "optimizer"
    for kind, names in (
        ("norm", _NORM),
        ("batch_norm", _BATCH_NORM),
        ("softmax", _SOFTMAX),
        ("reduction", _REDUCTION),
        ("gather", _GATHER),
        ("scatter", _SCATTER),
        ("copy", _COPY),
        ("fill", _FILL),
        ("sync", _SYNC),
        ("none", _ALLOCATE),
    ):
        if name in names:
            return kind
    return "pointwise"


# memfit's own operators: passes over the tensors they write in place, beyond one read and one
# write. cross_entropy_grad_ reads a chunk of logits twice (softmax statistics, then the
# gradient) and writes it once.
EXTRA_PASSES = {"cross_entropy_grad_": 1}
TENSORS_PER_LAUNCH = 64  # about what torch's multi_tensor_apply packs into one launch


def op_work(func: Any, args: tuple, kwargs: dict, out: Any) -> OpWork:
    """The class and amount of work of one operator call."""
    name = func.__name__.removesuffix(".default")
    if _launches_nothing(func, args, kwargs, out):
        return OpWork(name, "none", kernels=0)
    kind = classify(func)
    inputs = tensors_in((args, kwargs))
    outputs = tensors_in(out)
    dtype = inputs[0].dtype if inputs else (outputs[0].dtype if outputs else torch.float32)
    if kind == "none":
        return OpWork(name, "none", dtype=dtype, kernels=0)
    flops = 0.0
    if kind in ("matmul", "attention", "conv"):
        try:
            flops = float(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out))
        except Exception:  # formulas assume standard arguments; the bytes still price it
            flops = 0.0
        if kind == "attention" and _is_causal(func, args, kwargs):
            flops /= 2  # PyTorch's formulas count every score; a causal kernel skips half
    moved = _bytes(kind, func, inputs, outputs, args)
    kernels = 1
    if name.startswith("_foreach_"):  # multi-tensor apply: one launch per group of tensors
        kernels = max(1, -(-len(inputs) // TENSORS_PER_LAUNCH))
    shape = _product_shape(name, args) if kind == "matmul" else ()
    if kind == "matmul":  # the operands' dtype: addmm.dtype_out adds bf16 products to float32
        dtype = next((a.dtype for a in reversed(args) if isinstance(a, torch.Tensor)), dtype)
    return OpWork(name, kind, flops, moved, dtype, kernels, shape, len(inputs))


def _product_shape(name: str, args: tuple) -> tuple[int, ...]:
    """``(batch, M, N, K)`` of a matrix product's ``[M, K] @ [K, N]``."""
    operands = [a for a in args if isinstance(a, torch.Tensor) and a.dim() >= 2]
    if len(operands) < 2 or name.startswith("_scaled_mm"):
        return ()
    left, right = operands[-2], operands[-1]
    batch = left.shape[0] if left.dim() == 3 else 1
    return (int(batch), int(left.shape[-2]), int(right.shape[-1]), int(left.shape[-1]))


def _is_causal(func: Any, args: tuple, kwargs: dict) -> bool:
    if "is_causal" in kwargs:
        return bool(kwargs["is_causal"])
    for argument, value in zip(func._schema.arguments, args, strict=False):
        if argument.name == "is_causal":
            return bool(value)
    return False


def _bytes(kind: str, func: Any, inputs: list, outputs: list, args: tuple) -> int:
    written = sum(_size(t) for t in outputs)
    if kind == "gather":
        index = sum(_size(t) for t in inputs if not t.is_floating_point())
        return 2 * written + index  # the rows picked, read and written
    if kind == "scatter":
        values = sum(_size(t) for t in inputs if t.is_floating_point() and _size(t) < written)
        return written + 2 * values  # the output zero-filled, the values read and added
    if kind == "fill":
        return written
    # an in-place operator reads what it overwrites, and writes it back
    overwritten = _written_in_place(func, args)
    if kind == "custom":
        name = func.__name__.split(".")[0]
        overwritten *= 1 + EXTRA_PASSES.get(name, 0)
    return _unique_bytes(inputs + outputs) + overwritten


def _written_in_place(func: Any, args: tuple) -> int:
    """Bytes of the arguments ``func`` writes in place (its schema's ``Tensor(a!)``)."""
    total = 0
    for argument, value in zip(func._schema.arguments, args, strict=False):
        alias = argument.alias_info
        if alias is not None and alias.is_write:
            total += sum(_size(t) for t in tensors_in(value))  # a tensor or a list of them
    return total


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _unique_bytes(tensors: list[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _size(tensor)
    return total


def _launches_nothing(func: Any, args: tuple, kwargs: dict, out: Any) -> bool:
    """Views, metadata and aliasing operators: every output shares an input's storage."""
    if func.namespace == "memfit":
        return False
    if func.namespace != "aten":
        return True
    if func._schema.is_mutable:
        return False
    outputs = tensors_in(out)
    if not outputs:
        return func.overloadpacket is not torch.ops.aten._local_scalar_dense
    inputs = {t.untyped_storage()._cdata for t in tensors_in((args, kwargs))}
    return all(t.untyped_storage()._cdata in inputs for t in outputs)
