"""Resolve what users name on the command line: zoo models and ``path/to/file.py:function``."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memfit.errors import InvalidInputError

__all__ = ["load_callable", "is_file_reference"]


def is_file_reference(text: str) -> bool:
    return ":" in text and text.rsplit(":", 1)[0].endswith(".py")


def load_callable(reference: str, *, what: str = "builder") -> Callable[..., Any]:
    """Import ``path/to/file.py:name`` and return ``name`` from it.

    Raises:
        InvalidInputError: when the file does not exist, fails to import, or lacks the name.
    """
    if not is_file_reference(reference):
        raise InvalidInputError(
            f"{what} {reference!r} is not of the form path/to/file.py:function_name"
        )
    path_text, name = reference.rsplit(":", 1)
    path = Path(path_text)
    if not path.is_file():
        raise InvalidInputError(f"{what} file {path_text!r} does not exist")
    module_name = f"memfit_user_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file: report it, whatever it raised
        raise InvalidInputError(
            f"importing {path_text!r} raised {type(error).__name__}: {error}"
        ) from error
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise InvalidInputError(
            f"{path_text!r} has no function {name!r}; callables defined there: "
            f"{', '.join(found) or 'none'}"
        )
    return function
