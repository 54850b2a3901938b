"""Config validation shared by the zoo's config dataclasses."""

from __future__ import annotations

from memfit.errors import InvalidInputError

__all__ = ["check_heads"]


def check_heads(config: object, dim: int, n_heads: int, n_kv_heads: int | None = None) -> None:
    """Raise InvalidInputError unless heads divide the width (and kv heads divide the heads).

    Args:
        config: the config being checked, named in the message.
        dim: model width.
        n_heads: attention (query) heads.
        n_kv_heads: key/value heads, or None when the model has no grouped-query attention.
    """
    name = type(config).__name__
    if n_heads < 1 or dim % n_heads:
        raise InvalidInputError(
            f"{name}: dim={dim} is not divisible by n_heads={n_heads}; choose n_heads among "
            f"the divisors of dim (e.g. dim // 64 for 64-wide heads)"
        )
    if n_kv_heads is not None and (n_kv_heads < 1 or n_heads % n_kv_heads):
        raise InvalidInputError(
            f"{name}: n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}; choose "
            f"n_kv_heads among the divisors of n_heads (n_kv_heads=n_heads means no grouping)"
        )
