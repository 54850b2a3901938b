"""Triton kernels launched from Python, skipped on fake tensors and listed in the profile.

Custom autograd Functions often launch Triton kernels (Liger's and Unsloth's fused losses and
norms, a user's own): ``kernel[grid](x, y, ...)``. The kernel reads and writes tensors its caller
allocated with torch (``torch.empty_like(x)`` before the launch), and those allocations are
traced like any other; the launch itself needs a GPU driver, and on fake tensors Triton fails
("0 active drivers"). While tracing, a launch given a fake tensor is skipped, and the profile's
warnings name the kernel, its launches, the bytes of the tensors it was given, and what memfit
assumed: that it allocates nothing itself.

Known limitations:
    * Memory a kernel allocates itself (scratch from ``triton.set_allocator`` for on-device
      tensor descriptors) is assumed to be 0.
    * Values the kernel writes are not computed: Python that reads one (``.item()``) gets
      memfit's assumed value, named in the warnings too.
    * Only launches through ``kernel[grid](...)`` are caught; ``kernel.run(...)`` called
      directly still fails, with the model's error.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake

from memfit.units import format_bytes

__all__ = ["SkippedLaunches", "triton_launches_skipped"]


class SkippedLaunches:
    """The Triton launches skipped while tracing: per kernel, launches and bytes given."""

    def __init__(self) -> None:
        self.kernels: dict[str, list[int]] = {}

    def add(self, name: str, tensors: list[torch.Tensor]) -> None:
        entry = self.kernels.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += sum(t.numel() * t.element_size() for t in tensors)

    def messages(self) -> list[str]:
        return [
            f"Triton kernel {name}: {launches} launch{'es' if launches > 1 else ''} not run on "
            f"fake tensors; the tensors given to it ({format_bytes(given)} in all) were "
            f"allocated by torch and counted; memfit assumed it allocates nothing itself "
            f"(0 bytes)"
            for name, (launches, given) in self.kernels.items()
        ]


def _kernel_name(kernel: Any) -> str:
    function = getattr(kernel, "fn", kernel)  # an autotuner or heuristics wraps the JIT kernel
    function = getattr(function, "fn", function)
    return getattr(function, "__qualname__", None) or type(kernel).__name__


@contextlib.contextmanager
def triton_launches_skipped() -> Iterator[SkippedLaunches]:
    """Inside the context, ``kernel[grid](...)`` given a fake tensor returns without running."""
    skipped = SkippedLaunches()
    # the model's code imported Triton if it launches kernels; memfit never imports it
    jit = sys.modules.get("triton.runtime.jit")
    interface = getattr(jit, "KernelInterface", None)
    if interface is None:
        yield skipped
        return
    original = interface.__getitem__

    def launcher(self: Any, grid: Any) -> Any:
        launch = original(self, grid)

        def launch_unless_fake(*args: Any, **kwargs: Any) -> Any:
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            if not any(is_fake(t) for t in tensors):
                return launch(*args, **kwargs)
            skipped.add(_kernel_name(self), tensors)
            return None

        return launch_unless_fake

    interface.__getitem__ = launcher
    try:
        yield skipped
    finally:
        interface.__getitem__ = original
