"""Token inputs against the tables they index: ids below the vocabulary, sequences within the
position table.

An embedding looks up rows by index; on a GPU an id past the table fails the step ("index out of
range" in a device assert). On fake tensors nothing is looked up, so a prediction would happily
describe a step that cannot run. This module compares what the batch holds (the bound an input
spec declares, ``<50257``, or the largest id of a real tensor) and how long its sequences are
with the model's token embedding and learned position table, before any tracing.

Known limitations:
    The token embedding is ``get_input_embeddings()`` (Hugging Face) or else the first
    ``nn.Embedding`` whose name does not say "pos"; the position table is an ``nn.Embedding``
    whose last name part holds "pos" or is "wpe" (a padding index offsets it, as RoBERTa's).
    Rotary and ALiBi models have no table and are not limited. Ids are checked for inputs named
    ``*input_ids`` (or an unnamed 2-d integer tensor) and for ``labels`` of the same shape.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import is_fake

from memfit.errors import InvalidInputError

__all__ = ["check_token_inputs", "token_inputs"]


def token_inputs(batch: Any) -> dict[Hashable, torch.Tensor]:
    """The batch's token-id tensors and token labels, by key (names, positions, or None)."""
    items: dict[Hashable, Any]
    if isinstance(batch, Mapping):
        items = dict(batch)
    elif isinstance(batch, (tuple, list)):
        items = dict(enumerate(batch))
    else:
        items = {None: batch}
    ids = {
        key: value
        for key, value in items.items()
        if isinstance(value, torch.Tensor)
        and not value.dtype.is_floating_point
        and value.dtype != torch.bool
        and value.dim() == 2
        and (str(key).endswith("input_ids") or key in (None, 0))
    }
    shapes = {tuple(v.shape) for v in ids.values()}
    labels = items.get("labels")
    if isinstance(labels, torch.Tensor) and tuple(labels.shape) in shapes:
        ids["labels"] = labels
    return ids


def _config_value(module: nn.Module, names: tuple[str, ...], size: int) -> str:
    config = getattr(module, "config", None)
    for name in names:
        if getattr(config, name, None) == size:
            return f" (config.{name}={size})"
    return ""


def _token_embedding(module: nn.Module) -> tuple[str, nn.Embedding] | None:
    get = getattr(module, "get_input_embeddings", None)
    found: Any = None
    if callable(get):
        try:
            found = get()
        except (NotImplementedError, AttributeError):
            found = None
    for name, child in module.named_modules():
        if found is not None and child is found and isinstance(child, nn.Embedding):
            return name, child
    for name, child in module.named_modules():
        if isinstance(child, nn.Embedding) and not _is_positional(name):
            return name, child
    return None


def _is_positional(name: str) -> bool:
    last = name.rsplit(".", 1)[-1].lower()
    return "pos" in last or last == "wpe"


def _position_tables(module: nn.Module) -> list[tuple[str, int]]:
    tables = []
    for name, child in module.named_modules():
        if isinstance(child, nn.Embedding) and _is_positional(name):
            offset = child.padding_idx + 1 if child.padding_idx is not None else 0
            tables.append((name, child.num_embeddings - offset))
    return tables


def _shape_text(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')}[{','.join(map(str, tensor.shape))}]"


def check_token_inputs(
    module: nn.Module, batch: Any, declared: Mapping[Hashable, int] | None = None
) -> None:
    """Refuse token ids past the vocabulary and sequences past the position table.

    Args:
        module: the model (its embeddings' sizes are read; nothing runs).
        batch: the example batch (real, fake or meta tensors: shapes are read).
        declared: exclusive upper bounds of inputs by key (an input spec's ``<N``); without
            one, a real tensor's largest value decides.

    Raises:
        InvalidInputError: naming the input, the table, its size (and the config value that
            set it) and the fix.
    """
    ids = token_inputs(batch)
    if not ids:
        return
    embedding = _token_embedding(module)
    for key, tensor in ids.items():
        high = (declared or {}).get(key)
        if high is None:
            high = _largest_plus_one(tensor)
        if embedding is None or high is None or high <= embedding[1].num_embeddings:
            continue
        name, table = embedding
        rows = table.num_embeddings
        label = "input" if key is None else f"input {key!r}"
        config = _config_value(module, ("vocab_size",), rows)
        raise InvalidInputError(
            f"{label} holds token ids up to {high - 1} (<{high}), but the model's token "
            f"embedding {name!r} has {rows} rows{config}: ids from {rows} up would fail on the "
            f"GPU (index out of range), so there is no such step to predict. Give ids below "
            f"{rows} (in an input spec: {key or 'input_ids'}={_shape_text(tensor)}<{rows}), or "
            f"build the model with a vocabulary of {high} or more"
        )
    length = max(t.shape[-1] for t in ids.values())
    for name, positions in _position_tables(module):
        if length > positions:
            example = next(iter(ids.values()))
            config = _config_value(module, ("max_position_embeddings", "n_positions"), positions)
            raise InvalidInputError(
                f"the batch's sequences are {length} tokens long ({_shape_text(example)}), but "
                f"the model's position table {name!r} holds {positions} positions{config}: "
                f"positions from {positions} up would fail on the GPU (index out of range). "
                f"Use sequences of at most {positions} tokens (--seq-len {positions}, or "
                f"[{example.shape[0]},{positions}] in the input spec), or build the model with "
                f"{length} positions or more"
            )


def _largest_plus_one(tensor: torch.Tensor) -> int | None:
    if is_fake(tensor) or tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    return int(tensor.max()) + 1
