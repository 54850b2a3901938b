"""Which software made a profile, and whether it is the software the device model describes.

A prediction mixes two stacks: the tracer runs this machine's PyTorch (which tensors autograd
saves, autocast's casts, the optimizers' and the modules' Python code) and the CUDA device model
describes the target's (``CudaStack``: kernel choice, workspaces). Profiles record both, so a
mismatch is visible; a torch minor release that differs gets a warning.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

import torch
from torch import nn

from memfit import __version__ as memfit_version
from memfit.installed import installed_version
from memfit.trace.cuda.stack import CudaStack, minor_version

__all__ = ["MODEL_LIBRARIES", "gpu_versions", "software_versions", "version_warnings"]

MODEL_LIBRARIES = ("transformers", "timm", "peft", "torchvision")
"""Libraries whose release changes a model's code, recorded when the model uses them
(transformers 5.25 and 5.17 build T5-small differently: 29% apart in fp32 on an H200)."""


def software_versions(module: nn.Module | None = None) -> dict[str, str]:
    """memfit, Python and torch here, and the model libraries ``module`` is built from."""
    versions = {
        "memfit": memfit_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if module is not None:
        used = {type(m).__module__.partition(".")[0] for m in module.modules()}
        for library in MODEL_LIBRARIES:
            version = installed_version(library) if library in used else None
            if version is not None:
                versions[library] = version
    return versions


def gpu_versions() -> dict[str, str]:
    """The CUDA runtime and cuDNN torch runs with here (empty without a CUDA build)."""
    versions = {}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if cudnn:
        versions["cudnn"] = f"{cudnn // 10000}.{cudnn // 100 % 100}.{cudnn % 100}"
    return versions


def version_warnings(traced: Mapping[str, str], stack: CudaStack) -> list[str]:
    """A warning when the torch that traced differs (major.minor) from the stack's."""
    here = minor_version(traced.get("torch", ""))
    if not here or here == stack.torch_version:
        return []
    return [
        f"traced with torch {here}, while the target is torch {stack.torch_version} "
        f"({stack.describe()}): torch {here}'s own code decided which tensors autograd saves, "
        f"autocast's casts and the optimizers' and modules' buffers, which can differ between "
        f"releases (on memfit's nine-model check, torch 2.9 to 2.14 traced the same, "
        f"2.6 up to 0.5% apart: bench/results/torch_matrix.json); if the GPU runs torch "
        f"{here}, say so (--torch-version {here}, stack=stack_for('{here}')), else trace with "
        f"the GPU's torch"
    ]
