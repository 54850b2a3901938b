"""The ``memfit`` command group: its help, its version, and the commands loaded when named."""

from __future__ import annotations

import importlib

import click

__all__ = ["cli", "FORMATS"]

FORMATS = click.Choice(["table", "json"])


class _Commands(click.Group):
    """The commands, with ``report`` and ``compare`` loaded only when named (they import the
    report's figures, numpy and friends: a tenth of a second ``estimate`` need not pay)."""

    _LAZY = {"report": "memfit.report.commands", "compare": "memfit.report.commands"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._LAZY and cmd_name not in self.commands:
            module = importlib.import_module(self._LAZY[cmd_name])
            self.add_command(getattr(module, cmd_name))
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memfit")
def cli() -> None:
    """Predict, explain and fit the GPU memory of PyTorch training steps."""
