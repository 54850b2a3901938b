"""Use memfit's guard from training frameworks, none of which memfit depends on.

- ``memfit.integrations.hf.guard_trainer(trainer)``: Hugging Face ``Trainer``.
- ``memfit.integrations.lightning.MemfitGuard``: PyTorch Lightning callback.

Each module imports its framework only when used and raises ``MemfitError`` saying what to
install when it is missing.
"""

from __future__ import annotations

__all__: list[str] = []
