"""PyTorch's allocator options as text: where the environment sets them, and how to read them.

PyTorch reads ``PYTORCH_ALLOC_CONF`` (torch >= 2.9), else ``PYTORCH_CUDA_ALLOC_CONF``:
comma-separated ``option:value`` pairs (``expandable_segments:True,max_split_size_mb:128``).
Torch-free, for the command line's answer cache, the tracer's simulation and the applier of
``ExpandableSegments`` alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["ALLOC_CONF_NAMES", "environment_conf", "split_options"]

ALLOC_CONF_NAMES = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")  # in PyTorch's order


def environment_conf(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The variable PyTorch reads and its text; ``("", "")`` where neither is set."""
    for name in ALLOC_CONF_NAMES:
        text = environ.get(name, "").strip()
        if text:
            return name, text
    return "", ""


def split_options(text: str) -> list[tuple[str, str, str]]:
    """``(option, key, value)`` for each option, split on the commas outside brackets
    (``roundup_power2_divisions:[256:1,512:2]`` is one option)."""
    options, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            options.append(text[start:i])
            start = i + 1
    options.append(text[start:])
    found = []
    for option in (o.strip() for o in options if o.strip()):
        key, _, value = (part.strip() for part in option.partition(":"))
        found.append((option, key, value))
    return found
