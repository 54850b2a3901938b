"""Finding a model's checkpointable units: its repeated blocks, such as transformer layers.

The rule, applied to the module tree:

1. Candidates are the children of containers (``nn.ModuleList``, ``nn.Sequential``,
   ``nn.ModuleDict``) that are neither containers themselves nor leaves (a module without
   children is one operation: checkpointing it alone saves nothing), and the flat containers
   among them: a container of two or more leaves (``nn.Sequential(nn.Linear, nn.GELU,
   nn.Linear)`` as a block of an ``nn.ModuleList``). Without any container, the children of
   every module are considered instead.
2. A class is repeated when at least two candidates are of that class (for a flat container:
   of its type with the same types of layers, in order). Candidates nested
   inside a repeated-class candidate are dropped (a block's own sub-layers are not blocks),
   and this is repeated until nothing changes.
3. The blocks are the candidates of the repeated class with the most parameters in total, plus
   the candidates of other repeated classes that sit in the same containers and are at least a
   quarter of its size per instance (stacks that alternate layer types, such as attention and
   state-space layers).

This finds ``transformer.h.*`` (Hugging Face GPT-2), ``model.layers.*`` (LLaMA),
``bert.encoder.layer.*`` (BERT), ``encoder.layers.*`` (torchvision ViT), ``layers.*`` (the
memfit zoo) and every ResNet block across its stages (``layer1.0`` .. ``layer4.1``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from torch import nn

__all__ = ["find_blocks", "block_patterns", "CONTAINERS"]

CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
"""Module types that only hold other modules."""

_Kind = type | tuple[type, tuple[type, ...]]  # a module's class; a container's with its layers

_SIBLING_MIN_SIZE = 0.25
"""Other layer types in the same stack count when this large relative to the main block."""


def find_blocks(model: nn.Module) -> list[str]:
    """The fully qualified names of ``model``'s repeated blocks, in model order.

    Args:
        model: any module.

    Returns:
        Names as in ``model.named_modules()``; empty when nothing repeats.

    Known limitations:
        Blocks must be modules: a model that loops over one block object, or builds its layers
        from plain functions, has none. Repeated blocks outside containers are found only when
        the model has no container at all.
    """
    names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    parent_of: dict[str, str] = {}
    candidates = _candidates(model, parent_of, only_containers=True)
    if not candidates:
        candidates = _candidates(model, parent_of, only_containers=False)
    chosen = _outermost_repeated(candidates)
    if not chosen:
        return []
    by_class: dict[_Kind, list[str]] = defaultdict(list)
    for name in chosen:
        by_class[_kind(candidates[name])].append(name)
    size = {name: _num_params(candidates[name]) for name in chosen}

    def total(cls: _Kind) -> int:
        return sum(size[n] for n in by_class[cls])

    main = max(by_class, key=lambda cls: (total(cls), len(by_class[cls])))
    main_mean = total(main) / len(by_class[main])
    stacks = {parent_of[n] for n in by_class[main]}
    blocks = set(by_class[main])
    for cls, members in by_class.items():
        if cls is main or total(cls) / len(members) < _SIBLING_MIN_SIZE * main_mean:
            continue
        blocks.update(n for n in members if parent_of[n] in stacks)
    order = {name: index for index, name in enumerate(names.values())}
    return sorted(blocks, key=order.__getitem__)


def _candidates(
    model: nn.Module, parent_of: dict[str, str], *, only_containers: bool
) -> dict[str, nn.Module]:
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    for parent_name, parent in model.named_modules():
        if only_containers and not isinstance(parent, CONTAINERS):
            continue
        for child_name, child in parent.named_children():
            leaf = not any(True for _ in child.children())
            flat = _flat(child) and isinstance(parent, CONTAINERS)
            if leaf or (isinstance(child, CONTAINERS) and not flat):
                continue
            if id(child) in seen:  # the same module reachable twice: one block
                continue
            seen.add(id(child))
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            found[name] = child
            parent_of[name] = parent_name
    return found


def _flat(container: nn.Module) -> bool:
    """A container of two or more leaves (a block when it sits in a container itself)."""
    children = list(container.children())
    return len(children) >= 2 and not any(True for child in children for _ in child.children())


def _kind(module: nn.Module) -> _Kind:
    """What makes two candidates the same block: the class, and a container's layers."""
    if isinstance(module, CONTAINERS):
        return (type(module), tuple(type(child) for child in module.children()))
    return type(module)


def _outermost_repeated(candidates: dict[str, nn.Module]) -> list[str]:
    """Candidates of repeated classes that are not inside another such candidate."""
    alive = list(candidates)
    while True:
        counts: dict[_Kind, int] = defaultdict(int)
        for name in alive:
            counts[_kind(candidates[name])] += 1
        repeated = [n for n in alive if counts[_kind(candidates[n])] >= 2]
        outer = [n for n in repeated if not any(n.startswith(f"{o}.") for o in repeated)]
        if outer == alive:
            return outer
        alive = outer


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_patterns(module: nn.Module, blocks: Sequence[str]) -> tuple[str, ...]:
    """``blocks`` as few patterns: ``parent.*`` where the blocks are all of a parent's children."""
    children = {name: [c for c, _ in m.named_children()] for name, m in module.named_modules()}
    by_parent: dict[str, list[str]] = {}
    for block in blocks:
        parent, _, child = block.rpartition(".")
        by_parent.setdefault(parent, []).append(child)
    patterns: list[str] = []
    for parent, kids in by_parent.items():
        if parent and sorted(kids) == sorted(children.get(parent, [])):
            patterns.append(f"{parent}.*")
        else:
            patterns += [f"{parent}.{k}" if parent else k for k in kids]
    return tuple(patterns)
