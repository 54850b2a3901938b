"""Memory CUDA kernels use beyond their outputs, which a trace of ATen outputs cannot see.

* cuBLAS: PyTorch gives each (cuBLAS handle, stream) a workspace from the caching allocator the
  first time a matrix product runs there, and keeps it. Handles are per thread, and autograd runs
  CUDA backward on its own thread, so forward and backward each get one
  (``getCurrentCUDABlasHandle`` / ``getChosenWorkspaceSize`` in
  ``aten/src/ATen/cuda/CublasHandlePool.cpp``: 32 MiB on sm90, 8 MiB + 128 KiB before).
* cuBLASLt: addmm with a 1-D bias runs through cuBLASLt (``gemm_and_bias``), whose workspace
  (``CUBLASLT_WORKSPACE_SIZE``, 1 MiB by default) is a second one per (handle, stream) where
  PyTorch does not share the cuBLAS workspace with it.
"""

from __future__ import annotations

from typing import Any

import torch

from memfit.devices import DeviceSpec
from memfit.profile import Category, Phase
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


def cuda_workspace_rules(device: DeviceSpec, stack: CudaStack) -> dict[Any, WorkspaceRule]:
    """Workspace rules for ``MemoryRecorder`` that reproduce what ``device`` allocates."""
    size = (
        stack.cublas_workspace_bytes
        if device.sm >= (9, 0)
        else stack.cublas_workspace_bytes_pre_sm90
    )
    allocated: set[tuple[str, str]] = set()

    def once(recorder: MemoryRecorder, library: str, nbytes: int) -> None:
        thread = "autograd" if recorder.phase is Phase.BACKWARD else "main"
        if nbytes > 0 and (library, thread) not in allocated:
            allocated.add((library, thread))
            recorder.persistent(nbytes, f"{library} workspace ({thread} thread)", Category.OTHER)

    def cublas(recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        once(recorder, "cuBLAS", size)
        bias = args[0] if args else None
        if func.overloadpacket is aten.addmm and isinstance(bias, torch.Tensor) and bias.dim() == 1:
            once(recorder, "cuBLASLt", stack.cublaslt_workspace_bytes)

    return {op: cublas for op in _BLAS_OPS}
