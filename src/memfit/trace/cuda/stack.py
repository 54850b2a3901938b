"""The software on the target GPU machine: what decides kernels beyond the chip itself.

Kernel choice depends on the PyTorch build and cuDNN as well as on the GPU. The defaults describe
the stack memfit's accuracy benchmark runs on (bench/results/device_probe_*.json records it);
``stack_for("2.13")`` describes another torch release where memfit knows what changes, and
``memfit.estimate(..., stack=...)`` predicts for it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from memfit.errors import InvalidInputError

__all__ = ["CudaStack", "DEFAULT_STACK", "TORCH_RULES", "minor_version", "stack_for"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CudaStack:
    """Versions that change which CUDA kernels run and what they allocate.

    Attributes:
        torch_version: the torch release (major.minor) whose kernel rules this describes.
        cudnn_version: cuDNN runtime version as ``torch.backends.cudnn.version()`` reports it.
        cudnn_sdpa_preferred: whether SDPA tries cuDNN attention first on sm90/sm100
            (PyTorch does when cuDNN > 9.15 on those chips, see ``check_prefer_cudnn_attention``
            in ``aten/src/ATen/native/transformers/cuda/sdp_utils.cpp``).
        cudnn_sdpa_max_head_dim: largest head dimension cuDNN attention takes on sm90/sm100
            (128 on other chips).
        cudnn_sdpa_dropout_sixteenths: whether cuDNN attention needs a dropout probability
            that is a multiple of 1/16 (torch 2.12 and later check it; 2.11 does not).
        cublas_workspace_bytes: cuBLAS workspace per (thread handle, stream) for sm90; other
            chips use ``cublas_workspace_bytes_pre_sm90``.
        cublaslt_workspace_bytes: the separate cuBLASLt workspace per (thread handle, stream)
            that addmm with a bias uses (0 where PyTorch shares the cuBLAS one).

    The defaults were read on an H200 with torch 2.11.0+cu130 and cuDNN 9.19
    (bench/results/accuracy_h200.json: ``sdpa`` and ``workspaces``).
    """

    torch_version: str = "2.11"
    cudnn_version: int = 91900
    cudnn_sdpa_preferred: bool = True
    cudnn_sdpa_max_head_dim: int = 256
    cudnn_sdpa_dropout_sixteenths: bool = False
    cublas_workspace_bytes: int = 32 * 1024 * 1024
    cublas_workspace_bytes_pre_sm90: int = 4096 * 1024 * 2 + 16 * 1024 * 8
    cublaslt_workspace_bytes: int = 1024 * 1024

    @property
    def cudnn(self) -> str:
        """cuDNN as ``major.minor`` (91900 -> ``"9.19"``)."""
        return f"{self.cudnn_version // 10000}.{self.cudnn_version // 100 % 100}"

    def describe(self) -> str:
        """``torch 2.11 + cuDNN 9.19``."""
        return f"torch {self.torch_version} + cuDNN {self.cudnn}"

    def to_dict(self) -> dict[str, str]:
        """What a profile records as its ``target_stack``."""
        return {"torch": self.torch_version, "cudnn": self.cudnn}


DEFAULT_STACK = CudaStack()

MEASURED_ON = DEFAULT_STACK.describe()
"""The stack the device model's figures were measured on (an H200)."""


@dataclass(frozen=True, slots=True)
class TorchRules:
    """What a torch release does differently, read from its Linux x86-64 wheel on PyPI: the
    cuDNN it pins (``Requires-Dist: nvidia-cudnn-cu1x``) and the checks whose messages its
    ``libtorch_cuda.so`` holds (``check_prefer_cudnn_attention``; "cuDNN dropout probability
    resolution is limited to 1/16")."""

    cudnn_version: int
    cudnn_sdpa_preferred: bool
    cudnn_sdpa_dropout_sixteenths: bool


TORCH_RULES: dict[str, TorchRules] = {
    "2.6": TorchRules(90100, False, False),
    "2.7": TorchRules(90501, False, False),
    "2.8": TorchRules(91002, False, False),
    "2.9": TorchRules(91002, True, False),  # preferred only with cuDNN > 9.15: not its own
    "2.10": TorchRules(91002, True, False),
    "2.11": TorchRules(91900, True, False),
    "2.12": TorchRules(92000, True, True),
    "2.13": TorchRules(92000, True, True),
    "2.14": TorchRules(92400, True, True),
}


def minor_version(version: str) -> str:
    """``"2.14"`` for ``"2.14.1+cu130"``; ``""`` when it is not a version."""
    found = re.match(r"(\d+)\.(\d+)", version.strip())
    return f"{found[1]}.{found[2]}" if found else ""


def _cudnn_number(version: str | int) -> int:
    if isinstance(version, int) and not isinstance(version, bool) and version >= 10000:
        return version
    found = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", str(version).strip())
    if not found:
        raise InvalidInputError(
            f"cuDNN version {version!r} is not a version; give it as major.minor[.patch], "
            f"e.g. 9.19 (torch.backends.cudnn.version() on the GPU machine: 91900)"
        )
    return int(found[1]) * 10000 + int(found[2]) * 100 + int(found[3] or 0)


def stack_for(
    torch_version: str | None = None, cudnn_version: str | int | None = None
) -> CudaStack:
    """The target stack for a torch release and cuDNN version (each None: the default's).

    A torch release alone brings the cuDNN its PyPI wheel pins; the kernel rules that memfit
    knows to change between releases follow ``TORCH_RULES``; the rest (workspace sizes, cuDNN
    attention's head-dimension limit) stays as measured on torch 2.11.

    Raises:
        InvalidInputError: a torch release memfit has no rules for, or a malformed version.
    """
    stack = DEFAULT_STACK
    if torch_version is not None:
        release = minor_version(str(torch_version))
        if release not in TORCH_RULES:
            raise InvalidInputError(
                f"torch version {torch_version!r}: memfit knows the kernel rules of torch "
                f"{', '.join(TORCH_RULES)}; give one of those (major.minor, e.g. 2.13)"
            )
        rules = TORCH_RULES[release]
        stack = dataclasses.replace(
            stack,
            torch_version=release,
            cudnn_version=rules.cudnn_version,
            cudnn_sdpa_preferred=rules.cudnn_sdpa_preferred,
            cudnn_sdpa_dropout_sixteenths=rules.cudnn_sdpa_dropout_sixteenths,
        )
    if cudnn_version is not None:
        stack = dataclasses.replace(stack, cudnn_version=_cudnn_number(cudnn_version))
    return stack
