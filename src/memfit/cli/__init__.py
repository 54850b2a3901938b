"""The ``memfit`` command line: parse, call the public API, print.

memfit estimate gpt2 --device h100-80gb
memfit estimate path/to/model.py:build --input "input_ids=int64[8,1024]<50257"
memfit devices | memfit zoo | memfit calibrate
memfit report gpt2 --out report.html | memfit compare a.json b.json

Each command imports what it needs when it runs: ``memfit --help`` and errors in the
arguments answer without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from memfit.cli.calibrate import calibrate
from memfit.cli.group import cli
from memfit.cli.listings import devices, zoo
from memfit.cli.trace_commands import estimate, plan_command
from memfit.errors import MemfitError
from memfit.gc_threshold import fewer_collections
from memfit.import_notices import torchao_enum_notices_muted

__all__ = ["main"]

for _command in (estimate, plan_command, devices, zoo, calibrate):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a user error, with its message on stderr)."""
    try:
        # the process is the command's: fewer collections from the imports on
        with fewer_collections(), torchao_enum_notices_muted():  # a model may import transformers
            cli.main(
                args=list(argv) if argv is not None else None,
                prog_name="memfit",
                standalone_mode=False,
            )
    except MemfitError as error:
        click.echo(f"error: {error}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as error:
        error.show()
        return error.exit_code
    return 0
