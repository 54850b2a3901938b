"""One configuration of the validation zoo: models a user brings, built from configs.

Each ``Case`` is one configuration: a builder, an input spec, the loss and forward, the precision,
the optimizer and the mode (training, or inference under ``no_grad`` / ``inference_mode``). Every
builder takes ``tiny``: the same architecture at toy sizes for ``--smoke`` runs on a CPU.

Config arguments are the ones transformers 5.17 (the GPU machine) and 5.25 both accept; the
attention implementation is left to transformers' default (SDPA where the model supports it), as
a user gets it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Builder = Callable[[], nn.Module]


@dataclass(frozen=True)
class Case:
    """One configuration of the zoo.

    Attributes:
        name: unique, e.g. ``mistral-gqa-fp32``.
        group: ``llm``, ``encoder``, ``vision``, ``misc`` or ``inference`` (one GPU call each).
        arch: the architecture, for counting how many the zoo covers.
        make: ``tiny -> (builder, input spec)``.
        precision: ``fp32``, ``bf16-mixed``, ``fp16-mixed`` or ``bf16`` (pure).
        optimizer: a memfit optimizer name, or a name of ``OPTIMIZER_FACTORIES``; None for
            inference.
        mode: ``train``, ``no_grad`` (eval() + torch.no_grad) or ``inference_mode``.
        image: the batch is ``(images, labels)``: forward ``model(images)``, cross-entropy loss.
        needs: the packages the builder imports.
    """

    name: str
    group: str
    arch: str
    make: Callable[[bool], tuple[Builder, str]]
    precision: str
    optimizer: str | None = "adamw"
    mode: str = "train"
    image: bool = False
    needs: tuple[str, ...] = ("transformers",)

    def built(self, tiny: bool) -> tuple[Builder, str]:
        """The builder and the input spec, as this case runs them.

        Inference drops the labels (an encoder-decoder gets ``decoder_input_ids`` of the
        labels' length instead); pure bf16 feeds floating inputs in bf16, as its user must.
        """
        builder, spec = self.make(tiny)
        if self.mode != "train":
            items = []
            for item in spec.split():
                if item.startswith("labels=") and self.arch in ENCODER_DECODERS:
                    items.append("decoder_input_ids=" + item.removeprefix("labels="))
                elif not (item.startswith("labels=") or (self.image and item.startswith("int64"))):
                    items.append(item)
            spec = " ".join(items)
        if self.precision == "bf16":
            spec = spec.replace("float32[", "bfloat16[")
        return builder, spec

    def missing(self) -> list[str]:
        return [name for name in self.needs if importlib.util.find_spec(name) is None]

    def loss_fn(self) -> Callable[[Any, Any], torch.Tensor] | None:
        return image_loss if self.image and self.mode == "train" else None

    def forward(self) -> Callable[[Any, Any], Any] | None:
        return image_forward if self.image and self.mode == "train" else None

    def optimizer_arg(self) -> Any:
        return OPTIMIZER_FACTORIES.get(self.optimizer or "", self.optimizer)


ENCODER_DECODERS = ("t5", "bart", "whisper")


def image_forward(model: Any, batch: Any) -> Any:
    return model(batch[0])


def image_loss(output: Any, batch: Any) -> torch.Tensor:
    return F.cross_entropy(output, batch[1])


def adamw_for_loop(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, foreach=False)


def adamw_foreach(params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-4, foreach=True)


OPTIMIZER_FACTORIES: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adamw-for-loop": adamw_for_loop,
    "adamw-foreach": adamw_foreach,
}


def named(builder: Builder, name: str) -> Builder:
    builder.__name__ = name
    builder.__qualname__ = name
    return builder
