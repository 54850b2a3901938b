"""Hugging Face's causal masks on fake tensors: take the branch a GPU would take.

Without a KV cache (as when checkpointing turns ``use_cache`` off) transformers looks at the
position ids for packed sequences before building a causal mask for SDPA
(``find_packed_sequence_indices``). On real tensors, positions ``0..n-1`` are one sequence per
row and the mask is skipped in favour of ``is_causal=True``; on fake tensors the values cannot be
read, transformers assumes packing and builds the full ``[batch, 1, seq, seq]`` mask, and every
layer's attention keeps a bf16 copy of it: 0.5 GiB on LLaMA-1B at batch 4, sequence 2048 that
the real step never allocates. When the batch carries no ``position_ids``, the model makes them
itself as ``0..n-1``, so while ``gpu_mask_branches(batch)`` is active the search reports no
packing, as it would on the GPU. Batches with their own ``position_ids`` keep transformers'
assumption (a mask is predicted: over-predicted if the rows are not packed, never under).

Likewise, when the batch carries no ``attention_mask``, a padding mask reaching the mask
builders is one the model made itself, of ones (OPT in transformers 5.17 does: ``torch.ones``
when none is given). transformers skips the causal mask for such a mask on the GPU, but calls a
fake tensor "tracing" and keeps it (OPT-125M at batch 4 x 1024: a float mask of 16 MiB saved by
each layer's attention, +2.9% allocated). The skip decisions (``_ignore_causal_mask_sdpa``,
``_ignore_bidirectional_mask_sdpa``) are then asked about "no padding", which is what they see
on the GPU.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["gpu_mask_branches"]

_SEARCH = "find_packed_sequence_indices"  # transformers.masking_utils' packed-sequence search
_SKIPS = ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa")


def _no_packing(*args: Any, **kwargs: Any) -> None:
    return None  # positions 0..n-1: one sequence per row


def _without_padding(skip: Callable[..., bool]) -> Callable[..., bool]:
    def decide(padding_mask: Any, *args: Any, **kwargs: Any) -> bool:
        return skip(None, *args, **kwargs)  # the model's own mask: all ones, no padding

    return decide


@contextlib.contextmanager
def gpu_mask_branches(batch: Any) -> Iterator[None]:
    """Within, transformers finds no packed sequences in positions it made itself, and no
    padding in a mask it made itself (if loaded)."""
    module = sys.modules.get("transformers.masking_utils")
    if module is None:
        yield
        return
    given = batch.keys() if isinstance(batch, Mapping) else ()
    replaced: dict[str, Any] = {}
    if "position_ids" not in given and isinstance(batch, Mapping):
        replaced[_SEARCH] = _no_packing
    # positional batches (tuples) may carry a mask: transformers' assumption is kept for them
    if "attention_mask" not in given and not isinstance(batch, (tuple, list)):
        replaced.update(
            (name, _without_padding(getattr(module, name)))
            for name in _SKIPS
            if callable(getattr(module, name, None))
        )
    originals = {name: getattr(module, name) for name in replaced if hasattr(module, name)}
    for name in originals:
        setattr(module, name, replaced[name])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(module, name, original)
