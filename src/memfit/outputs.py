"""Where memfit writes its files: checked before the work that fills them.

A report of a large model takes seconds to compute; a path that cannot be written should say so
before, not after.
"""

from __future__ import annotations

import os
from pathlib import Path

from memfit.errors import InvalidInputError

__all__ = ["check_output_file", "check_output_dir"]


def check_output_file(path: str | os.PathLike[str], *, option: str = "--out") -> Path:
    """The path of a file memfit will write (overwriting one that exists).

    Raises:
        InvalidInputError: the path is empty or a folder, its folder is missing or not
            writable; the message names the path and what to do.
    """
    if not str(path).strip():
        raise InvalidInputError(f"{option} is empty; give a file name such as 'report.html'")
    file = Path(path)
    if file.is_dir():
        raise InvalidInputError(
            f"{option} {str(path)!r} is a folder; give a file name inside it, e.g. "
            f"{str(file / 'report.html')!r}"
        )
    folder = file.parent
    if not folder.is_dir():
        raise InvalidInputError(
            f"{option} {str(path)!r}: the folder {str(folder)!r} does not exist; create it "
            f"(mkdir -p {folder}) or write somewhere else"
        )
    if not os.access(folder, os.W_OK):
        raise InvalidInputError(
            f"{option} {str(path)!r}: the folder {str(folder)!r} is not writable; write "
            f"somewhere else"
        )
    return file


def check_output_dir(path: str | os.PathLike[str], *, option: str = "--png") -> Path:
    """The path of a folder memfit will write files into (created, with its parents, if missing).

    Raises:
        InvalidInputError: the path is empty or an existing file, or the nearest existing
            folder above it is not writable.
    """
    if not str(path).strip():
        raise InvalidInputError(f"{option} is empty; give a folder such as 'figures'")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(
            f"{option} {str(path)!r} is a file, not a folder; give a folder (created if "
            f"missing), e.g. {str(folder.with_suffix('')) + '-figures'!r}"
        )
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise InvalidInputError(
            f"{option} {str(path)!r}: {str(existing)!r} is a file, so no folder can be made "
            f"inside it; give another folder"
        )
    if existing.exists() and not os.access(existing, os.W_OK):
        raise InvalidInputError(
            f"{option} {str(path)!r}: {str(existing)!r} is not writable; give another folder"
        )
    return folder
