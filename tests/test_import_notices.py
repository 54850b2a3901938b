"""torchao's enum notices: muted exactly, and gone from the command line's output."""

from __future__ import annotations

import enum
import importlib.util
import logging
import os
import subprocess
import sys

import pytest

from memfit.import_notices import torchao_enum_notices_muted

NOTICE = (
    "%s is an Enum subclass and is now natively supported by torch.compile as an opaque value "
    "type. Calling register_constant() on Enum subclasses is deprecated and will be an error in "
    "a future release."
)


class Theirs(enum.Enum):
    A = 1


class Ours(enum.Enum):
    A = 1


Theirs.__module__ = "torchao.quantization.quantize_.common.kernel_preference"


def test_only_torchaos_enum_notices_are_dropped_and_only_inside(caplog) -> None:
    logger = logging.getLogger("torch.utils._pytree")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with torchao_enum_notices_muted():
            logger.warning(NOTICE, Theirs)
            logger.warning(NOTICE, Ours)
            logger.warning("something else about %s", Theirs)
        logger.warning(NOTICE, Theirs)
    said = [record.getMessage() for record in caplog.records]
    assert said == [NOTICE % Ours, f"something else about {Theirs}", NOTICE % Theirs]


@pytest.mark.slow  # a fresh interpreter imports transformers and torchao
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("transformers", "torchao")),
    reason="needs transformers and torchao (their import printed the notices)",
)
def test_estimate_of_a_hugging_face_model_prints_only_its_answer() -> None:
    env = {**os.environ, "MEMFIT_NO_CACHE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "memfit.cli", "estimate", "hf-gpt2", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    lines = (run.stdout + run.stderr).splitlines()
    assert run.returncode == 0, lines
    assert len(lines) == 1 and lines[0].startswith("FITS"), lines
