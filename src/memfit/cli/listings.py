"""``memfit devices`` and ``memfit zoo``: what memfit predicts for, and the models it builds."""

from __future__ import annotations

import json

import click

from memfit.cli.group import FORMATS

__all__ = ["devices", "zoo"]

_QUIET_NAMES = click.option("--quiet", "-q", is_flag=True, help="Print the names only, one a line.")


@click.command()
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@_QUIET_NAMES
def devices(fmt: str, quiet: bool) -> None:
    """List the GPUs memfit can predict for."""
    from memfit.devices import DEVICES
    from memfit.report.tables import format_table
    from memfit.units import format_bytes

    if quiet and fmt == "table":
        click.echo("\n".join(DEVICES))
        return
    if fmt == "json":
        entries = [
            {
                "name": d.name,
                "display_name": d.display_name,
                "memory_bytes": d.memory_bytes,
                "bandwidth_bytes_s": d.bandwidth_bytes_s,
                "bf16_flops": d.bf16_flops,
                "fp16_flops": d.fp16_flops,
                "tf32_flops": d.tf32_flops,
                "fp32_flops": d.fp32_flops,
                "sm": list(d.sm),
            }
            for d in DEVICES.values()
        ]
        click.echo(json.dumps(entries, indent=2))
        return
    rows = [
        (
            d.name,
            d.display_name,
            format_bytes(d.memory_bytes, precision=1),
            f"{d.bandwidth_bytes_s / 1e9:.0f}",
            f"{d.bf16_flops / 1e12:.0f}" if d.bf16_flops else "-",
            f"{d.fp32_flops / 1e12:.1f}",
            d.arch,
        )
        for d in DEVICES.values()
    ]
    click.echo(
        format_table(
            ("name", "GPU", "memory", "GB/s", "bf16 TFLOP/s", "fp32 TFLOP/s", "arch"),
            rows,
            align="llrrrrl",
        )
    )


@click.command()
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@_QUIET_NAMES
def zoo(fmt: str, quiet: bool) -> None:
    """List the built-in models (built from configs: no weights, no network).

    memfit's own implementations, and Hugging Face's (hf-gpt2, hf-llama-1b, ...) when
    transformers is installed.
    """
    from memfit import zoo as models
    from memfit.report.tables import format_table

    if quiet and fmt == "table":
        click.echo("\n".join(models.names()))
        return
    entries = [models.get(name) for name in models.names()]
    if fmt == "json":
        click.echo(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "description": e.description,
                        "implementation": e.implementation,
                        "family": e.family,
                        "num_params": e.num_params,
                        "default_batch_size": e.default_batch_size,
                        "default_seq_len": e.default_seq_len,
                        "input_spec": e.input_spec(None, None),
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    rows = [
        (
            e.name,
            f"{e.num_params / 1e6:,.1f}M",
            e.default_batch_size,
            e.default_seq_len or "-",
            e.implementation,
            e.description,
        )
        for e in entries
    ]
    headers = ("name", "params", "batch", "seq", "code", "description")
    click.echo(format_table(headers, rows, align="lrrrll"))
    if not any(e.implementation == "transformers" for e in entries):
        click.echo(
            "\n(pip install transformers to list Hugging Face's implementations: hf-gpt2, ...)"
        )
    else:
        click.echo(
            "\ncode: whose implementation. memfit's own are written for memfit in plain "
            "PyTorch; transformers' are Hugging Face's classes, which use more memory for the "
            "same shapes (measured on an H200, bf16-mixed, reserved: hf-gpt2 14.21 GiB, gpt2 "
            "10.44 GiB; hf-llama-1b 32.82 GiB, llama-1b 29.09 GiB)"
        )
