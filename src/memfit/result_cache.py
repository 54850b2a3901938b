"""The command line's cache of answers: the same question about a zoo model answers at once.

``memfit estimate llama-1b`` traces the step on fake tensors and needs torch imported: seconds.
Its answer depends only on the command's options and on the code that computes it, so the
command line keeps each answer (what it printed, and a plan's JSON) under a key made of:

- the command and every option that changes the answer (a zoo model's name, batch, precision,
  optimizer, device, budget, output format...);
- the allocator options of the environment (``PYTORCH_ALLOC_CONF``,
  ``PYTORCH_CUDA_ALLOC_CONF``), which the estimate simulates;
- a digest of memfit's own source files, the installed versions of torch and transformers, and
  the saved calibration (``memfit calibrate``), so an upgrade, an edit or a new calibration
  misses the cache.

It is read before torch is imported. Models from files (whose code and imports memfit cannot
fingerprint), loss or forward functions from files, and the local GPU (``--device cuda``) are
never cached. ``--no-cache`` (or ``MEMFIT_NO_CACHE=1``) recomputes; the answers live in
``$XDG_CACHE_HOME/memfit/answers`` (``~/.cache/memfit/answers``), the newest 200 kept.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from memfit.alloc_conf_text import ALLOC_CONF_NAMES

__all__ = ["cache_key", "load", "store", "cache_dir"]

KEEP = 200


def cache_dir() -> Path:
    """Where answers are kept (beside ``memfit calibrate``'s calibration)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "memfit" / "answers"


@lru_cache(maxsize=1)
def _code_digest() -> str:
    """memfit's source files, the versions of what computes with them, and the calibration."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    for name in ("torch", "transformers"):
        try:
            digest.update(f"{name}={metadata.version(name)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{name}=none".encode())
    calibration = cache_dir().parent / "calibration.json"  # as memfit.cost saves it
    if calibration.is_file():
        digest.update(calibration.read_bytes())
    return digest.hexdigest()


def cache_key(command: str, options: dict[str, Any]) -> str | None:
    """The key of this command's answer, or None when it must not be cached (module doc)."""
    if os.environ.get("MEMFIT_NO_CACHE", "").strip() not in ("", "0"):
        return None
    model = str(options.get("model", ""))
    files = [options.get(k) for k in ("loss_fn", "forward", "input_spec")]
    if ":" in model or model.endswith(".py") or any(files):
        return None  # code memfit cannot fingerprint
    if str(options.get("device", "")).strip().lower().startswith("cuda"):
        return None  # the local GPU
    conf = {name: os.environ.get(name, "") for name in ALLOC_CONF_NAMES}  # simulated options
    question = json.dumps({"command": command, **options, **conf}, sort_keys=True, default=str)
    return hashlib.sha256(f"{_code_digest()}\n{question}".encode()).hexdigest()


def load(key: str | None) -> dict[str, Any] | None:
    """The answer stored under ``key``, or None (missing, unreadable or not ours)."""
    if key is None:
        return None
    path = cache_dir() / f"{key}.json"
    try:
        answer = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("stdout"), str):
        return None
    os.utime(path)  # recently used: kept longest
    return answer


def store(key: str | None, answer: dict[str, Any]) -> None:
    """Keep ``answer`` under ``key``; a cache that cannot be written is simply not kept."""
    if key is None:
        return
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f"{key}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(answer), encoding="utf-8")
        temporary.replace(folder / f"{key}.json")
        kept = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        return
