"""Memory CUDA kernels use beyond their outputs, which a trace of ATen outputs cannot see.

* cuBLAS: PyTorch gives each (cuBLAS handle, stream) a workspace from the caching allocator the
  first time a matrix product runs there, and keeps it. Handles are per thread, and autograd runs
  CUDA backward on its own thread, so forward and backward each get one
  (``getCurrentCUDABlasHandle`` / ``getChosenWorkspaceSize`` in
  ``aten/src/ATen/cuda/CublasHandlePool.cpp``: 32 MiB on sm90, 8 MiB + 128 KiB before).
* cuBLASLt: addmm with a 1-D bias runs through cuBLASLt (``gemm_and_bias``), whose workspace
  (``CUBLASLT_WORKSPACE_SIZE``, 1 MiB by default) is a second one per (handle, stream) where
  PyTorch does not share the cuBLAS workspace with it.
* Reductions: ``sum``/``mean`` over outer dimensions combine partial sums through a global
  buffer (``memfit.trace.cuda.reductions``).
* Attention backward: accumulators the kernels allocate (``memfit.trace.cuda.attention``).
* Layer norm: contiguous copies of strided inputs (``memfit.trace.cuda.input_copies``).
* ``_safe_softmax`` (the math attention kernel's softmax): besides its output, the mask of
  ``-inf`` scores (one byte per element) and the fully-masked rows (one byte per row), freed on
  return (measured on an H200: 256.1 MiB beside a 1 GiB float32 output, bench/results/
  validation_traces_h200.jsonl.gz).
* ``_softmax_backward_data``: the kernel first multiplies the gradient by the softmax's output
  into a temporary of the gradient's size (``Tensor tmp = grad * output`` in
  ``softmax_backward_cuda_out``, ``aten/src/ATen/native/cuda/SoftMax.cu``), freed on return;
  measured on an H200 as 1 GiB beside a 1 GiB float32 input gradient (a Mistral-shaped model's
  math attention: the step's peak) and equal to the output on DeBERTa-v2 and Swin
  (bench/results/validation_traces_h200.jsonl.gz, bench/results/peak_holders_h200.json).

Each rule was checked against per-operator measurements on an H200 (``memfit.measure``'s op
probe; bench/results/accuracy_h200.json), except cuDNN convolution workspaces: classes of
calls read from the validation zoo's per-operator measurements (``memfit.trace.cuda.convolution``,
on sm80 and newer).
"""

from __future__ import annotations

from typing import Any

import torch

from memfit.devices import DeviceSpec
from memfit.profile import Category, Phase
from memfit.trace.cuda.attention import ATTENTION_SCRATCH
from memfit.trace.cuda.convolution import (
    CONV_FORWARD_OPS,
    conv_backward_workspaces,
    conv_forward_workspace,
    conv_layout_copies,
)
from memfit.trace.cuda.input_copies import input_copy_rules
from memfit.trace.cuda.reductions import in_memory_order, reduction_scratch
from memfit.trace.cuda.stack import CudaStack
from memfit.trace.recorder import MemoryRecorder, WorkspaceRule

__all__ = ["cuda_workspace_rules"]

aten = torch.ops.aten
_BLAS_OPS = (
    aten.mm,
    aten.addmm,
    aten.bmm,
    aten.baddbmm,
    aten.addbmm,
    aten.addmv,
    aten.mv,
    aten._addmm_activation,
)
_REDUCTIONS = (aten.sum, aten.mean)


def _take_last_allocation(recorder: MemoryRecorder, tensor: Any) -> int | None:
    """Remove the newest event when it allocated ``tensor`` (to re-emit it later); its key."""
    events, allocations = recorder.trace.events, recorder.trace.allocations
    if not isinstance(tensor, torch.Tensor) or not events or events[-1] <= 0:
        return None
    newest = allocations[events[-1]]
    if newest.shape != tuple(tensor.shape) or newest.op != "convolution_backward":
        return None
    recorder.trace.phases.pop()
    return events.pop()


def cuda_workspace_rules(device: DeviceSpec, stack: CudaStack) -> dict[Any, WorkspaceRule]:
    """Workspace rules for ``MemoryRecorder`` that reproduce what ``device`` allocates."""
    if device.sm >= (9, 0):
        cublas_bytes = stack.cublas_workspace_bytes
    else:
        cublas_bytes = stack.cublas_workspace_bytes_pre_sm90
    allocated: set[tuple[str, str]] = set()

    def once(recorder: MemoryRecorder, library: str, nbytes: int) -> None:
        thread = "autograd" if recorder.phase is Phase.BACKWARD else "main"
        if nbytes > 0 and (library, thread) not in allocated:
            allocated.add((library, thread))
            recorder.persistent(nbytes, f"{library} workspace ({thread} thread)", Category.OTHER)

    def cublas(recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        once(recorder, "cuBLAS", cublas_bytes)
        bias = args[0] if args else None
        if func.overloadpacket is aten.addmm and isinstance(bias, torch.Tensor) and bias.dim() == 1:
            once(recorder, "cuBLASLt", stack.cublaslt_workspace_bytes)

    def reduction(recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        source = args[0]
        if not isinstance(source, torch.Tensor) or not source.is_floating_point():
            return
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = tuple(range(source.dim())) if not dims else tuple(dims)
        name = func.__name__.removesuffix(".default")
        reduce_buffer(recorder, source, dims, f"{name} (reduce buffer)")

    def reduce_buffer(recorder: MemoryRecorder, source: Any, dims: tuple, op: str) -> None:
        shape, dims = in_memory_order(tuple(source.shape), tuple(source.stride()), dims)
        scratch = reduction_scratch(shape, dims, source.dtype, device)
        recorder.hidden([scratch.buffer_bytes, scratch.semaphore_bytes], op)

    def attention(recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        sizes = ATTENTION_SCRATCH[func.overloadpacket](args)
        recorder.hidden(sizes, f"{func.__name__.removesuffix('.default')} (scratch)")

    def safe_softmax(
        recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any
    ) -> None:
        scores = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        if isinstance(scores, torch.Tensor) and scores.dim() > 0:
            rows = scores.numel() // max(scores.shape[dim], 1)
            recorder.hidden([scores.numel(), rows], "_safe_softmax (masks)")

    def softmax_backward(
        recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any
    ) -> None:
        grad, output = args[0], args[1]
        if isinstance(grad, torch.Tensor) and isinstance(output, torch.Tensor):
            dtype = torch.promote_types(grad.dtype, output.dtype)
            numel = torch.broadcast_shapes(grad.shape, output.shape).numel()
            recorder.hidden([numel * dtype.itemsize], "_softmax_backward_data (grad x output)")

    def conv_forward(
        recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any
    ) -> None:
        if func.overloadpacket is aten.convolution:
            stride, padding, transposed, groups = args[3], args[4], args[6], args[8]
        else:  # conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1)
            stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
            padding = args[4] if len(args) > 4 else kwargs.get("padding", 0)
            groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
            transposed = False
        nbytes = conv_forward_workspace(args[0], args[1], out, stride, padding, groups, transposed)
        recorder.hidden([nbytes], "convolution (cuDNN workspace)")

    def conv_backward(
        recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any
    ) -> None:
        dy, x, w = args[:3]
        stride, padding, transposed, groups, mask = args[4], args[5], args[7], args[9], args[10]
        data, weight = conv_backward_workspaces(dy, x, w, stride, padding, groups, mask, transposed)
        # cuDNN makes the input gradient, its workspace, then the weight gradient and its own:
        # the weight gradient (allocated last by the recorder) moves after the data workspace
        grad_weight = _take_last_allocation(recorder, out[1]) if data else None
        recorder.hidden([data], "convolution_backward (cuDNN data workspace)")
        if grad_weight is not None:
            recorder.trace.events.append(grad_weight)
            recorder.trace.phases.append(recorder.phase)
        recorder.hidden(
            [weight],
            "convolution_backward (cuDNN weight workspace)",
            before_outputs=conv_layout_copies(dy, x, w),
        )
        if mask[2] and isinstance(dy, torch.Tensor) and dy.is_floating_point():
            # the bias gradient: grad_output.sum over all but the channels, after the backend
            # (convolution_backward in aten/src/ATen/native/Convolution.cpp)
            dims = (0, *range(2, dy.dim()))
            reduce_buffer(recorder, dy, dims, "convolution_backward (bias reduce buffer)")

    rules: dict[Any, WorkspaceRule] = {op: cublas for op in _BLAS_OPS}
    if device.sm >= (8, 0):  # the tensor-core engines the classes were measured on
        rules.update({op: conv_forward for op in CONV_FORWARD_OPS})
        rules[aten.convolution_backward] = conv_backward
    if hasattr(aten, "_safe_softmax"):
        rules[aten._safe_softmax] = safe_softmax
    rules[aten._softmax_backward_data] = softmax_backward
    rules.update({op: reduction for op in _REDUCTIONS})
    rules.update({op: attention for op in ATTENTION_SCRATCH})
    rules.update(input_copy_rules())
    return rules
