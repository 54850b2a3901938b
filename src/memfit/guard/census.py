"""Find the tensors that keep autograd graphs alive between steps, and say where they live.

At a step boundary of a normal training loop no tensor attached to an autograd graph is alive:
the loss and activations of the step are gone once ``backward`` and ``optimizer.step`` ran. A
tensor that still has a ``grad_fn`` there (``total_loss += loss`` without ``.item()``, a list of
losses kept for logging) holds its whole graph, and with it every activation saved for backward.
This module lists such tensors (through ``gc``), measures what their graphs hold, names the
variables that reference them, and records where tensors are created while a
``CreationTracker`` is active (a ``TorchFunctionMode``, used for one step only).
"""

from __future__ import annotations

import contextlib
import gc
import linecache
import os
import sys
import types
import weakref
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["CreationTracker", "graph_tensors", "graph_stats", "where_held", "retained_bytes"]

# frames in torch, in this package and in the standard library are not "where" a user made a tensor
_SKIP = (
    os.path.dirname(torch.__file__),
    os.path.dirname(os.path.abspath(__file__)),
    os.path.dirname(os.path.abspath(contextlib.__file__)),
)
_MAX_NODES = 20_000


def _user_frame(frame: types.FrameType | None) -> types.FrameType | None:
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame = frame.f_back
    return frame


def _site(frame: types.FrameType) -> str:
    file, line = frame.f_code.co_filename, frame.f_lineno
    code = linecache.getline(file, line).strip()
    return f"{os.path.basename(file)}:{line} in {frame.f_code.co_name}" + (
        f": {code}" if code else ""
    )


class CreationTracker(TorchFunctionMode):
    """Record, for every tensor a torch call returns with a ``grad_fn``, the user line that made
    (or last changed) it. Costs a frame walk per call: meant for one diagnostic step."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[int, tuple[weakref.ref[torch.Tensor], str]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            frame = _user_frame(sys._getframe(1))
            if frame is not None:
                self.sites[id(out)] = (weakref.ref(out), _site(frame))
        return out

    def site_of(self, tensor: torch.Tensor) -> str | None:
        entry = self.sites.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None


def graph_tensors() -> list[torch.Tensor]:
    """Every live tensor (visible to ``gc``) that is attached to an autograd graph.

    This includes tensors a graph saved for backward: their Python objects stay alive from C++
    after the program dropped them. ``python_referrers`` tells the two apart.
    """
    found = []
    for obj in gc.get_objects():
        # type(), not isinstance(): some module objects warn or raise through __class__
        if issubclass(type(obj), torch.Tensor) and obj.grad_fn is not None:
            found.append(obj)
    return found


def graph_roots(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors whose ``grad_fn`` is not inside another one's graph.

    ``total = total + loss`` makes ``loss`` part of ``total``'s graph; the root, ``total``, is
    the one to name. Tensors that a graph saved for backward are inside it too.
    """
    # A C++ node's Python wrapper dies with its last reference and its id() is then reused:
    # every node met stays referenced (the dicts' values) until the walk ends.
    inner: dict[int, Any] = {}
    visited: dict[int, Any] = {}
    roots = [t.grad_fn for t in tensors]
    stack = list(roots)
    while stack and len(visited) < 10 * _MAX_NODES:
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited[id(node)] = node
        for next_node, _ in node.next_functions:
            if next_node is not None:
                inner[id(next_node)] = next_node
                stack.append(next_node)
    return [t for t, root in zip(tensors, roots, strict=True) if id(root) not in inner]


def python_referrers(tensor: torch.Tensor, ignore: list[object]) -> list[object]:
    """Objects other than ``ignore`` (and this module's frames) that reference ``tensor``."""
    skip = {id(x) for x in ignore}
    return [
        r
        for r in gc.get_referrers(tensor)
        if id(r) not in skip
        and not (isinstance(r, types.FrameType) and r.f_code.co_filename == __file__)
    ]


def _saved(node: Any) -> list[torch.Tensor]:
    tensors = []
    for name in dir(node):
        if name.startswith("_saved_"):
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed by an earlier backward
                continue
            if isinstance(value, torch.Tensor):
                tensors.append(value)
            elif isinstance(value, (tuple, list)):
                tensors.extend(v for v in value if isinstance(v, torch.Tensor))
    return tensors


def graph_stats(
    tensor: torch.Tensor,
    seen_storage: set[int] | None = None,
    *,
    saved: bool = True,
) -> tuple[int, int]:
    """``(nodes, saved_bytes)`` of the graph behind ``tensor`` (at most 20 000 nodes walked).

    Saved tensors are counted once per storage; pass ``seen_storage`` to share that across calls.
    ``saved=False`` counts nodes only (much faster).
    """
    seen_storage = set() if seen_storage is None else seen_storage
    stack, saved_bytes = [tensor.grad_fn], 0
    seen: dict[int, Any] = {}  # values keep wrappers alive, so ids are not reused (graph_roots)
    while stack and len(seen) < _MAX_NODES:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        for t in _saved(node) if saved else ():
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen_storage:
                seen_storage.add(storage.data_ptr())
                saved_bytes += storage.nbytes()
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen), saved_bytes


def retained_bytes() -> int:
    """Bytes held by live tensors plus what graph-attached tensors keep saved (host census).

    Unreachable cycles are collected first: tensors in garbage are not retained, and counting
    them until Python's collector happens to run would make the count drop at random steps.
    """
    gc.collect()
    seen: set[int] = set()
    total = 0
    for obj in gc.get_objects():
        if not issubclass(type(obj), torch.Tensor):
            continue
        try:
            storage = obj.untyped_storage()
            pointer = storage.data_ptr()
        except (RuntimeError, NotImplementedError):
            # tensors without storage of their own: sparse, meta, and wrapper subclasses
            # (torchao's low-bit optimizer state, DTensor) whose storage is invalid; tensors
            # without data (the fakes torch.compile's caches keep)
            continue
        if pointer not in seen:
            seen.add(pointer)
            total += storage.nbytes()
        if obj.grad_fn is not None:
            total += graph_stats(obj, seen)[1]
    return total


def _holds(value: Any, tensor: torch.Tensor) -> str | None:
    if value is tensor:
        return ""
    if isinstance(value, (list, tuple)) and any(v is tensor for v in value[:100_000]):
        return f"an item of {type(value).__name__} of {len(value)} in "
    if isinstance(value, dict) and any(v is tensor for v in list(value.values())[:100_000]):
        return "a value of dict "
    return None


def where_held(tensor: torch.Tensor, frame: types.FrameType | None) -> list[str]:
    """Names that reference ``tensor``: locals of the calling frames, globals, attributes."""
    names: list[str] = []
    frame = _user_frame(frame)
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            prefix = _holds(value, tensor)
            if prefix is not None:
                place = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
                names.append(f"{prefix}local {name!r} in {frame.f_code.co_name} ({place})")
        frame = frame.f_back
    modules = {id(vars(m)): name for name, m in list(sys.modules.items()) if m is not None}
    for ref in gc.get_referrers(tensor):
        if isinstance(ref, dict) and id(ref) in modules:
            names += [
                f"global {k!r} of module {modules[id(ref)]}" for k, v in ref.items() if v is tensor
            ]
            continue
        if isinstance(ref, (types.FrameType, list, tuple, dict)):
            continue
        attributes = getattr(ref, "__dict__", None)
        if isinstance(attributes, dict):
            names += [
                f"attribute .{key} of a {type(ref).__name__}"
                for key, value in attributes.items()
                if value is tensor
            ]
    return names
