"""The caching allocator's options as this process's environment sets them, for the simulation.

PyTorch reads ``PYTORCH_ALLOC_CONF`` or ``PYTORCH_CUDA_ALLOC_CONF`` (``memfit.alloc_conf_text``).
A user who trains
with one set expects the prediction for it, so an estimate that is not given ``allocator=``
simulates what the environment says. Options the simulation does not model (another backend,
garbage collection thresholds, per-size rounding lists) are named in the profile's warnings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from memfit.alloc_conf_text import environment_conf, split_options
from memfit.trace.allocator import DEFAULT_SETTINGS, AllocatorSettings

__all__ = ["allocator_from_environment", "parse_alloc_conf"]


def allocator_from_environment(
    environ: Mapping[str, str] = os.environ,
) -> tuple[AllocatorSettings, tuple[str, ...]]:
    """The simulated options and warnings for what it leaves out; the default without any."""
    name, text = environment_conf(environ)
    return parse_alloc_conf(text, name) if text else (DEFAULT_SETTINGS, ())


def parse_alloc_conf(
    text: str, name: str = "PYTORCH_CUDA_ALLOC_CONF"
) -> tuple[AllocatorSettings, tuple[str, ...]]:
    """``text`` in PyTorch's syntax as simulated options, and a warning naming the rest."""
    fields: dict[str, object] = {}
    ignored = []
    for option, key, value in split_options(text):
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
