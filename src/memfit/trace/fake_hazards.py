"""What user code does that fake tensors cannot follow, neutralised while memfit traces it.

Fake tensors carry shapes, not values. Three common patterns break on them though the memory
they stand for is well defined:

* **Rejection sampling in initialisation.** ``nn.init.trunc_normal_`` (torch 2.14's) redraws
  values until none falls outside ``[a, b]``, testing ``mask.any()``: a fake tensor has no
  answer, the tracer assumes True, and the loop never ends (torchvision's ViT and ConvNeXt,
  every model initialised with it). Parameter values never matter for memory, so while tracing
  it fills in place (a normal draw clamped to ``[a, b]``): in-place operators, no temporaries.
* **Moving fake parameters.** In torch 2.14 ``Module._apply`` (``.to()``, ``.float()``) swaps
  the Python objects of fake parameters with ``torch.utils.swap_tensors``, which refuses tensors
  that have weak references, and fake ones always do (peft's LoRA layers call
  ``.to(base_layer.device, dtype)`` while being built). While tracing, a swap of two fake tensors
  sets the data of the first to the second instead: the same tensor object, the new dtype and
  device, the same bytes.
* **TorchScript functions.** ``torch.jit.script`` compiles a function to run in the TorchScript
  interpreter, which does not dispatch fake tensors (DeBERTa-v2's relative-position helpers in
  transformers 5.17). While tracing, module-level scripted functions of the model's modules are
  replaced by the Python functions they were compiled from (``_torchdynamo_inline``, kept by
  ``torch.jit.script``), which run the same operators.

Known limitations:
    * Scripted functions are found among the globals of the modules that define the model's
      classes; one imported under another name elsewhere still runs in TorchScript.
    * ``trunc_normal_`` implementations outside torch (timm's, say) are left as they are; they
      do not loop.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.init
import torch.utils
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

__all__ = ["fake_hazards_neutralised", "scripted_functions_in_python"]

_LOCK = threading.RLock()


def _trunc_normal_in_place(
    tensor: torch.Tensor,
    mean: float,
    std: float,
    a: float,
    b: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    with torch.no_grad():
        return tensor.normal_(mean, std, generator=generator).clamp_(min=a, max=b)


def _swap_tensors_allowing_fakes(original: Any) -> Any:
    def swap(t1: torch.Tensor, t2: torch.Tensor) -> None:
        if isinstance(t1, FakeTensor) and isinstance(t2, FakeTensor):
            if t1 is not t2:
                with torch.no_grad():
                    t1.data = t2
                t1.fake_device = t2.fake_device
            return
        original(t1, t2)

    return swap


@contextlib.contextmanager
def fake_hazards_neutralised() -> Iterator[None]:
    """Initialisation fills in place and fake parameters move by data, inside the context."""
    with _LOCK:
        trunc_normal = getattr(torch.nn.init, "_no_grad_trunc_normal_", None)
        swap = torch.utils.swap_tensors
        if trunc_normal is not None:
            torch.nn.init._no_grad_trunc_normal_ = _trunc_normal_in_place
        torch.utils.swap_tensors = _swap_tensors_allowing_fakes(swap)
        try:
            yield
        finally:
            torch.utils.swap_tensors = swap
            if trunc_normal is not None:
                torch.nn.init._no_grad_trunc_normal_ = trunc_normal


@contextlib.contextmanager
def scripted_functions_in_python(model: nn.Module) -> Iterator[list[str]]:
    """The model's modules call the Python originals of their scripted functions.

    Yields:
        The names of the functions replaced (``module.function``).
    """
    replaced: list[tuple[dict[str, Any], str, Any]] = []
    names = {type(m).__module__ for m in model.modules()}
    for name in sorted(names):
        namespace = getattr(sys.modules.get(name), "__dict__", None)
        if namespace is None:
            continue
        for attribute, value in list(namespace.items()):
            original = getattr(value, "_torchdynamo_inline", None)
            if isinstance(value, torch.jit.ScriptFunction) and callable(original):
                replaced.append((namespace, attribute, value))
                namespace[attribute] = original
    try:
        yield [f"{ns.get('__name__', '?')}.{attr}" for ns, attr, _ in replaced]
    finally:
        for namespace, attribute, value in replaced:
            namespace[attribute] = value
