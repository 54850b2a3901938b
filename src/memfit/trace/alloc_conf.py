"""The caching allocator's options as this process's environment sets them, for the simulation.

PyTorch reads ``PYTORCH_ALLOC_CONF`` (torch >= 2.9) or ``PYTORCH_CUDA_ALLOC_CONF``: comma-separated
``option:value`` pairs (``expandable_segments:True,max_split_size_mb:128``). A user who trains
with one set expects the prediction for it, so an estimate that is not given ``allocator=``
simulates what the environment says. Options the simulation does not model (another backend,
garbage collection thresholds, per-size rounding lists) are named in the profile's warnings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from memfit.result_cache import ALLOC_CONF_NAMES
from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings

__all__ = ["allocator_from_environment", "parse_alloc_conf"]


def allocator_from_environment(
    environ: Mapping[str, str] = os.environ,
) -> tuple[AllocatorSettings, tuple[str, ...]]:
    """The simulated options and warnings for what it leaves out; the default without any."""
    for name in ALLOC_CONF_NAMES:  # in PyTorch's order: the first it finds
        text = environ.get(name, "").strip()
        if text:
            return parse_alloc_conf(text, name)
    return DEFAULT_SETTINGS, ()


def parse_alloc_conf(
    text: str, name: str = "PYTORCH_CUDA_ALLOC_CONF"
) -> tuple[AllocatorSettings, tuple[str, ...]]:
    """``text`` in PyTorch's syntax as simulated options, and a warning naming the rest."""
    fields: dict[str, object] = {}
    ignored = []
    for option in _options(text):
        key, _, value = (part.strip() for part in option.partition(":"))
        if key == "expandable_segments" and value in ("True", "False"):
            fields[key] = value == "True"
        elif key in ("max_split_size_mb", "roundup_power2_divisions") and value.isdigit():
            fields[key] = int(value)
        else:
            ignored.append(option)
    warnings: tuple[str, ...] = ()
    if ignored:
        warnings = (
            f"{name}={text}: {', '.join(ignored)} not simulated; reserved memory is predicted "
            f"as PyTorch's caching allocator holds it without "
            f"{'that option' if len(ignored) == 1 else 'those options'}",
        )
    return AllocatorSettings(**fields), warnings  # type: ignore[arg-type]


def _options(text: str) -> list[str]:
    """Split on the commas outside brackets (``roundup_power2_divisions:[256:1,512:2]``)."""
    options, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            options.append(text[start:i])
            start = i + 1
    options.append(text[start:])
    return [o.strip() for o in options if o.strip()]
