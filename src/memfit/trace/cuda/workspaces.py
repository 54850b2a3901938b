"""Memory CUDA kernels use beyond their outputs, which a trace of ATen outputs cannot see.

* cuBLAS: PyTorch gives each (cuBLAS handle, stream) a workspace from the caching allocator the
  first time a matrix product runs there, and keeps it. Handles are per thread, and autograd runs
  CUDA backward on its own thread, so forward and backward each get one
  (``getCurrentCUDABlasHandle`` / ``getChosenWorkspaceSize`` in
  ``aten/src/ATen/cuda/CublasHandlePool.cpp``: 32 MiB on sm90, 8 MiB + 128 KiB before).
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
    threads_with_workspace: set[str] = set()

    def cublas(recorder: MemoryRecorder, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        thread = "autograd" if recorder.phase is Phase.BACKWARD else "main"
        if thread not in threads_with_workspace:
            threads_with_workspace.add(thread)
            recorder.persistent(size, f"cuBLAS workspace ({thread} thread)", Category.OTHER)

    return {op: cublas for op in _BLAS_OPS}
