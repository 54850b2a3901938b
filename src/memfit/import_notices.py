"""Notices other packages print when they are imported, muted where memfit imports them.

torchao (0.18) registers its enums as pytree constants; torch (2.14) answers each with a logged
warning (``torch.utils._pytree``: "<enum ...> is an Enum subclass and is now natively supported
by torch.compile ..."), printed on every import of torchao, which transformers imports with its
models. They say nothing about the user's step, so memfit drops exactly those records, only
while it imports: other records of that logger, and other enums' notices, still print.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator

__all__ = ["torchao_enum_notices_muted"]

_LOGGER = "torch.utils._pytree"
_NOTICE = "is an Enum subclass and is now natively supported"


def _is_torchao_enum_notice(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    subject = args[0] if args else None
    return (
        _NOTICE in str(record.msg)
        and isinstance(subject, type)
        and issubclass(subject, enum.Enum)
        and subject.__module__.split(".")[0] == "torchao"
    )


class _DropTorchaoEnumNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_torchao_enum_notice(record)


@contextlib.contextmanager
def torchao_enum_notices_muted() -> Iterator[None]:
    """Drop torch's notices about torchao's enums while the block runs (see the module)."""
    logger = logging.getLogger(_LOGGER)
    muted = _DropTorchaoEnumNotices()
    logger.addFilter(muted)
    try:
        yield
    finally:
        logger.removeFilter(muted)
