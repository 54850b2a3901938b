"""The other modules of a block stack that keep as much for backward as its blocks do.

``find_blocks`` reads only the module tree: in a stack of several layer types it keeps the
classes at least a quarter the size of the largest *in parameters*. Parameters are a poor proxy
for what a layer keeps: in hybrid vision stacks the early convolutional layers are small and
hold the largest activations (Hugging Face MobileViT: ``encoder.layer.0`` and ``.1`` have under
6% of the mean parameters of ``.2``-``.4`` and hold the 112x112 feature maps; left out, no plan
reached 80% of the step's activations). With a traced step at hand the planner adds, in model
order, the other children of the blocks' stacks that keep at least ``SIBLING_MIN_SAVED`` of a
block's mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

__all__ = ["SIBLING_MIN_SAVED", "with_large_siblings"]

SIBLING_MIN_SAVED = 0.25
"""A stack's other layers join the blocks when they keep this much of a block's mean."""


def with_large_siblings(
    model: nn.Module, blocks: Sequence[str], saved: Mapping[str, int]
) -> list[str]:
    """``blocks`` and the siblings in their stacks (modules with children) that keep at least
    ``SIBLING_MIN_SAVED`` of the blocks' mean saved bytes (``saved``: by module name), in
    model order."""
    if not blocks:
        return list(blocks)
    mean = sum(saved.get(b, 0) for b in blocks) / len(blocks)
    chosen = set(blocks)
    for stack in {b.rpartition(".")[0] for b in blocks}:
        for name, child in model.get_submodule(stack).named_children():
            fqn = f"{stack}.{name}" if stack else name
            has_children = any(True for _ in child.children())
            if fqn not in chosen and has_children and saved.get(fqn, 0) >= SIBLING_MIN_SAVED * mean:
                chosen.add(fqn)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(chosen, key=order.__getitem__)
