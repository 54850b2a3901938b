"""The software on the target GPU machine: what decides kernels beyond the chip itself.

Kernel choice depends on the PyTorch build and cuDNN as well as on the GPU. The defaults describe
the stack memfit's accuracy benchmark runs on (bench/results/device_probe_*.json records it); pass
another ``CudaStack`` to ``memfit.estimate(..., stack=...)`` to predict for a different one.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CudaStack", "DEFAULT_STACK"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CudaStack:
    """Versions that change which CUDA kernels run and what they allocate.

    Attributes:
        cudnn_version: cuDNN runtime version as ``torch.backends.cudnn.version()`` reports it.
        cudnn_sdpa_preferred: whether SDPA tries cuDNN attention first on sm90/sm100
            (PyTorch does when cuDNN > 9.15 on those chips, see ``check_prefer_cudnn_attention``
            in ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``).
        cudnn_sdpa_max_head_dim: largest head dimension cuDNN attention takes on sm90/sm100
            (128 on other chips).
        cudnn_sdpa_dropout_sixteenths: whether cuDNN attention needs a dropout probability
            that is a multiple of 1/16 (newer PyTorch checks it; torch 2.11 does not).
        cublas_workspace_bytes: cuBLAS workspace per (thread handle, stream) for sm90; other
            chips use ``cublas_workspace_bytes_pre_sm90``.
        cublaslt_workspace_bytes: the separate cuBLASLt workspace per (thread handle, stream)
            that addmm with a bias uses (0 where PyTorch shares the cuBLAS one).

    The defaults were read on an H200 with torch 2.11.0+cu130 and cuDNN 9.19
    (bench/results/accuracy_h200.json: ``sdpa`` and ``workspaces``).
    """

    cudnn_version: int = 91900
    cudnn_sdpa_preferred: bool = True
    cudnn_sdpa_max_head_dim: int = 256
    cudnn_sdpa_dropout_sixteenths: bool = False
    cublas_workspace_bytes: int = 32 * 1024 * 1024
    cublas_workspace_bytes_pre_sm90: int = 4096 * 1024 * 2 + 16 * 1024 * 8
    cublaslt_workspace_bytes: int = 1024 * 1024


DEFAULT_STACK = CudaStack()
