"""The installed release of a distribution, without importing it."""

from __future__ import annotations

from importlib import metadata

__all__ = ["installed_version"]


def installed_version(name: str) -> str | None:
    """``name``'s version as pip installed it; None where it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
