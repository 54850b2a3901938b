"""Load a PyTorch CUDA memory snapshot safely.

A snapshot is what ``torch.cuda.memory._dump_snapshot(path)`` writes after
``torch.cuda.memory._record_memory_history(...)``: a pickle of plain data (dicts, lists, tuples,
strings, numbers, booleans, None) with three keys that matter here:

* ``segments``: the allocator's segments (``cudaMalloc`` ranges) at the moment of the dump,
  each with ``device``, ``address``, ``total_size``, ``stream`` and its ``blocks`` (``address``,
  ``size``, ``requested_size``, ``state``: ``active_allocated`` / ``active_pending_free`` /
  ``inactive``).
* ``device_traces``: one list per device of trace entries, oldest first: ``action`` (``alloc``,
  ``free_requested``, ``free_completed``, ``segment_alloc``, ``segment_free``, ``segment_map``,
  ``segment_unmap``, ``oom``, ``snapshot``, ``annotate``), ``addr``, ``size`` (the requested
  size for ``alloc``), ``stream``, ``time_us``, ``frames`` (Python stack, innermost first) and,
  when ``torch.cuda.memory._set_memory_metadata`` was used, ``user_metadata``.
* ``allocator_settings``: ``expandable_segments``, ``max_split_size`` and friends.

Unpickling runs code named by the file, so a pickle from anywhere else must never go through
``pickle.load``. This loader resolves no names at all: a snapshot needs none, and any pickle that
asks for a class or function (``os.system``, ``torch.Tensor``, ...) is refused before anything runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, NoReturn

from memfit.errors import InvalidInputError

__all__ = ["load_snapshot", "loads_snapshot", "HOW_TO_SNAPSHOT"]

HOW_TO_SNAPSHOT = (
    "Make one with torch.cuda.memory._record_memory_history(max_entries=100_000, "
    "stacks='python') before the step and torch.cuda.memory._dump_snapshot('snapshot.pickle') "
    "after it."
)


class _Refused(Exception):
    pass


class _PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds only built-in containers and scalars."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> NoReturn:
        raise _Refused(f"persistent id {pid!r}")


def load_snapshot(path: str | Path) -> dict[str, Any]:
    """Read a memory snapshot pickle without executing anything it names.

    Args:
        path: a file written by ``torch.cuda.memory._dump_snapshot``.

    Returns:
        The snapshot as plain Python data (``segments``, ``device_traces``, ...).

    Raises:
        InvalidInputError: if the file is missing, is not a pickle, asks to load any class or
            function (not a memory snapshot, or unsafe), or lacks the snapshot keys.
    """
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"snapshot {str(path)!r} does not exist. {HOW_TO_SNAPSHOT}")
    return loads_snapshot(file.read_bytes(), name=str(path))


def loads_snapshot(data: bytes, *, name: str = "<bytes>") -> dict[str, Any]:
    """Like :func:`load_snapshot`, from the bytes of the file."""
    try:
        snapshot = _PlainUnpickler(io.BytesIO(data)).load()
    except _Refused as refused:
        raise InvalidInputError(
            f"{name!r} is not a memory snapshot or is unsafe: it asks to load {refused}, and a "
            f"snapshot holds only plain data (dicts, lists, strings, numbers), so memfit refuses "
            f"to run it. {HOW_TO_SNAPSHOT}"
        ) from None
    except Exception as error:  # any malformed pickle: EOF, bad opcode, wrong types
        raise InvalidInputError(
            f"{name!r} is not a readable memory snapshot ({type(error).__name__}: {error}). "
            f"{HOW_TO_SNAPSHOT}"
        ) from None
    _check_shape(snapshot, name)
    return snapshot


def _check_shape(snapshot: Any, name: str) -> None:
    if not isinstance(snapshot, dict) or not {"segments", "device_traces"} <= snapshot.keys():
        keys = sorted(snapshot)[:8] if isinstance(snapshot, dict) else type(snapshot).__name__
        raise InvalidInputError(
            f"{name!r} is a pickle but not a memory snapshot: expected a dict with 'segments' and "
            f"'device_traces', found {keys}. {HOW_TO_SNAPSHOT}"
        )
    segments, traces = snapshot["segments"], snapshot["device_traces"]
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise InvalidInputError(f"{name!r}: 'segments' must be a list of dicts. {HOW_TO_SNAPSHOT}")
    if not isinstance(traces, list) or not all(
        isinstance(t, list) and all(isinstance(e, dict) for e in t) for t in traces
    ):
        raise InvalidInputError(
            f"{name!r}: 'device_traces' must be a list (one per device) of lists of trace "
            f"entries. {HOW_TO_SNAPSHOT}"
        )
    if not any(traces):
        raise InvalidInputError(
            f"{name!r} has no allocation history (device_traces is empty): it was taken without "
            f"recording. {HOW_TO_SNAPSHOT}"
        )
    for d, trace in enumerate(traces):
        for i, entry in enumerate(trace):
            _check_fields(entry, _ENTRY_FIELDS, f"device_traces[{d}][{i}]", name)
    for k, segment in enumerate(segments):
        _check_fields(segment, _SEGMENT_FIELDS, f"segments[{k}]", name)
        blocks = segment.get("blocks", [])
        if not isinstance(blocks, list):
            raise InvalidInputError(
                f"{name!r}: segments[{k}]['blocks'] is {type(blocks).__name__}, not a list of "
                f"blocks; {_NOT_WRITTEN_BY_TORCH}"
            )
        for b, block in enumerate(blocks):
            _check_fields(block, _BLOCK_FIELDS, f"segments[{k}]['blocks'][{b}]", name)


_NOT_WRITTEN_BY_TORCH = (
    "torch.cuda.memory._dump_snapshot never writes that: take the snapshot again rather than "
    "edit it. " + HOW_TO_SNAPSHOT
)
_MEMORY_ACTIONS = {"alloc", "free_requested", "free_completed", "segment_alloc", "segment_free",
                   "segment_map", "segment_unmap"}  # fmt: skip
# field -> (required for memory actions, kind); "count" is an int >= 0
_ENTRY_FIELDS = {"action": (True, "str"), "addr": (True, "count"), "size": (True, "count"),
                 "stream": (False, "int"), "frames": (False, "list")}  # fmt: skip
_SEGMENT_FIELDS = {"total_size": (True, "count"), "address": (False, "count"),
                   "device": (False, "count"), "stream": (False, "int")}  # fmt: skip
_BLOCK_FIELDS = {"size": (True, "count"), "address": (False, "count"),
                 "requested_size": (False, "count"), "state": (False, "str")}  # fmt: skip


def _kind_ok(kind: str, value: Any) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    whole = isinstance(value, int) and not isinstance(value, bool)
    return whole and (kind == "int" or value >= 0)


def _check_fields(
    entry: dict[str, Any], fields: dict[str, tuple[bool, str]], where: str, name: str
) -> None:
    """Raise InvalidInputError naming ``where`` when a field is missing or of the wrong type."""
    if "action" in fields and entry.get("action") not in _MEMORY_ACTIONS:
        if isinstance(entry.get("action"), str):
            return  # oom, snapshot, annotate...: only read for warnings
        fields = {"action": fields["action"]}
    for field, (required, kind) in fields.items():
        if field not in entry:
            if required:
                raise InvalidInputError(
                    f"{name!r}: {where} has no {field!r} ({_entry_text(entry)}); "
                    f"{_NOT_WRITTEN_BY_TORCH}"
                )
            continue
        value = entry[field]
        if not _kind_ok(kind, value):
            wanted = {"str": "a string", "list": "a list", "int": "an integer"}.get(
                kind, "a whole number of 0 or more"
            )
            raise InvalidInputError(
                f"{name!r}: {where} has {field} {value!r} ({_entry_text(entry)}); {field} must "
                f"be {wanted}. {_NOT_WRITTEN_BY_TORCH}"
            )


def _entry_text(entry: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in entry.items() if k != "frames")
    return text if len(text) <= 80 else text[:77] + "..."
