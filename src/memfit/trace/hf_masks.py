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
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["gpu_mask_branches"]

_SEARCH = "find_packed_sequence_indices"  # transformers.masking_utils' packed-sequence search


@contextlib.contextmanager
def gpu_mask_branches(batch: Any) -> Iterator[None]:
    """Within, transformers finds no packed sequences in positions it made itself (if loaded)."""
    module = sys.modules.get("transformers.masking_utils")
    original = getattr(module, _SEARCH, None)
    own_positions = not isinstance(batch, Mapping) or "position_ids" in batch
    if module is None or original is None or own_positions:
        yield
        return

    def find_packed_sequence_indices(*args: Any, **kwargs: Any) -> None:
        return None  # positions 0..n-1: one sequence per row

    setattr(module, _SEARCH, find_packed_sequence_indices)
    try:
        yield
    finally:
        setattr(module, _SEARCH, original)
