"""Read meaning from a snapshot's trace entries: which phase of the step, which module, which line.

A snapshot does not say "forward" or "optimizer"; this module infers it, in this order:

1. ``user_metadata`` written with ``torch.cuda.memory._set_memory_metadata`` in memfit's form,
   ``memfit:phase=forward;module=layers.0.attn;type=Attention`` (keys optional; ``category=param``
   overrides the category). ``bench/snapshot_fixture.py`` shows how to stamp it from module hooks.
2. The Python stack (``stacks='python'``): a frame in ``torch/optim/`` means the optimizer step; a
   ``backward`` frame in ``torch/_tensor.py`` or ``torch/autograd/`` means backward; a module's
   ``forward`` (or ``nn.Module.__call__``) means forward; other code is "neutral".
3. Entries with no stack at all come from autograd's device thread, i.e. backward.

Neutral entries continue the phase before them (the loss belongs to forward, gradient clipping to
backward), except after the optimizer, where they open the next step's setup (loading a batch).

Known limitations:
    * Without memfit metadata, modules are named by source line (the innermost frame outside
      ``torch/``), not by their fully qualified name.
    * Custom autograd functions that run Python in backward show their own frames; allocations
      there are still counted as backward unless they look like a module forward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memfit.profile import Category, Phase

__all__ = ["Label", "parse_metadata", "frame_phase", "where", "next_phase", "setup_category"]

METADATA_PREFIX = "memfit:"
Label = Mapping[str, str]

_FORWARD_NAMES = {"forward", "_call_impl", "_wrapped_call_impl"}


def parse_metadata(entry: Mapping[str, Any]) -> dict[str, str]:
    """The ``key=value`` pairs of a memfit ``user_metadata`` string (empty if none)."""
    text = entry.get("user_metadata")
    if not isinstance(text, str) or not text.startswith(METADATA_PREFIX):
        return {}
    pairs = (item.partition("=") for item in text[len(METADATA_PREFIX) :].split(";"))
    return {key.strip(): value.strip() for key, sep, value in pairs if sep and key.strip()}


def _frames(entry: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    frames = entry.get("frames")
    return frames if isinstance(frames, list) else ()


def frame_phase(entry: Mapping[str, Any]) -> Phase | None | str:
    """The phase a stack points to: a Phase, ``"neutral"`` for other code, None for no stack."""
    frames = _frames(entry)
    if not frames:
        return None
    forward = False
    for frame in frames:
        filename = str(frame.get("filename", "")).replace("\\", "/")
        name = str(frame.get("name", ""))
        if "/torch/optim/" in filename:
            return Phase.OPTIMIZER
        if name == "backward" and (
            filename.endswith("torch/_tensor.py") or "/torch/autograd/" in filename
        ):
            return Phase.BACKWARD
        if name == "_engine_run_backward":
            return Phase.BACKWARD
        if name in _FORWARD_NAMES:
            forward = True
    return Phase.FORWARD if forward else "neutral"


def next_phase(found: Phase | None | str, previous: Phase) -> Phase:
    """Resolve a stack's verdict against the phase of the entry before it."""
    if isinstance(found, Phase):
        return found
    if found is None:  # no Python stack: autograd's device thread
        return Phase.BACKWARD if previous in (Phase.FORWARD, Phase.BACKWARD) else previous
    return Phase.SETUP if previous is Phase.OPTIMIZER else previous


def where(entry: Mapping[str, Any]) -> str:
    """The innermost frame outside PyTorch, as ``file.py:line function`` ("" without a stack)."""
    frames = _frames(entry)
    for frame in frames:
        filename = str(frame.get("filename", "")).replace("\\", "/")
        if "/torch/" in filename or filename.startswith("<") or not filename:
            continue
        return f"{filename.rsplit('/', 1)[-1]}:{frame.get('line', '?')} {frame.get('name', '')}"
    if frames:
        frame = frames[0]
        filename = str(frame.get("filename", "")).replace("\\", "/").rsplit("/", 1)[-1]
        return f"{filename}:{frame.get('line', '?')} {frame.get('name', '')}"
    return ""


def setup_category(entry: Mapping[str, Any]) -> Category:
    """Before the step, memory made by ``torch.nn`` (``.to``, ``.cuda``, init) holds weights."""
    for frame in _frames(entry):
        filename = str(frame.get("filename", "")).replace("\\", "/")
        if "/torch/nn/" in filename:
            return Category.PARAM
    return Category.OTHER
