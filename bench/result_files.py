"""Reading bench/results' JSON files, plain or gzipped.

The large results (bench/plans.py's runs, bench/costs.py's matrix) are committed gzipped, to
keep the checkout small: it is copied whole to the GPU machine, which takes 64 MiB. A path
named ``X.json`` that is not there is read from ``X.json.gz``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

__all__ = ["read_json"]


def read_json(path: Path | str) -> Any:
    """The JSON at ``path`` (gzip-compressed when its name ends ``.gz``; ``path + '.gz'`` when
    ``path`` itself is missing)."""
    path = Path(path)
    zipped = path.with_name(path.name + ".gz")
    if not path.exists() and zipped.exists():
        path = zipped
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)
