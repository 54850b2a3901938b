"""Loading snapshots: the real format is read, and anything that is not plain data is refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from memfit.errors import MemfitError
from memfit.snapshot.load import load_snapshot, loads_snapshot


class _Exploit:
    """Unpickling this with ``pickle.load`` would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_reads_a_snapshot_in_the_real_format(tmp_path: Path, make_snapshot) -> None:
    snapshot = make_snapshot()
    path = tmp_path / "snapshot.pickle"
    path.write_bytes(pickle.dumps(snapshot))
    loaded = load_snapshot(path)
    assert loaded == snapshot
    assert loaded["segments"][0]["segment_pool_id"] == (0, 0)  # tuples survive


def test_refuses_a_malicious_pickle_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"segments": [], "device_traces": [[_Exploit(marker)]]})
    path = tmp_path / "evil.pickle"
    path.write_bytes(payload)
    with pytest.raises(MemfitError, match="not a memory snapshot or is unsafe") as error:
        load_snapshot(path)
    assert "system" in str(error.value)
    assert "_record_memory_history" in str(error.value)  # says how to make a real one
    assert not marker.exists()


def test_refuses_pickled_tensors() -> None:
    with pytest.raises(MemfitError, match="unsafe: it asks to load torch"):
        loads_snapshot(pickle.dumps({"segments": [], "device_traces": [[torch.ones(2)]]}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a pickle at all", "not a readable memory snapshot"),
        (pickle.dumps([1, 2, 3]), "expected a dict with 'segments' and 'device_traces'"),
        (pickle.dumps({"segments": [], "device_traces": [[]]}), "no allocation history"),
        (pickle.dumps({"segments": 3, "device_traces": [[]]}), "'segments' must be a list"),
    ],
)
def test_refuses_what_is_not_a_snapshot(data: bytes, message: str) -> None:
    with pytest.raises(MemfitError, match=message):
        loads_snapshot(data)


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(MemfitError, match="does not exist.*_dump_snapshot"):
        load_snapshot(tmp_path / "nope.pickle")
