"""``memfit calibrate``: fit the step-time model to the local GPU, or time the host."""

from __future__ import annotations

import json

import click

from memfit.cli.group import FORMATS

__all__ = ["calibrate"]


@click.command()
@click.option("--dry-run", is_flag=True, help="Measure and print; do not save.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; just save the calibration.")
@click.option(
    "--host",
    is_flag=True,
    help="Time this machine instead: its CPU's fused AdamW and (with a GPU) pinned copies, "
    "for plans that offload to it (no GPU needed).",
)
def calibrate(dry_run: bool, fmt: str, quiet: bool, host: bool) -> None:
    """Fit the step-time model to the local GPU (a few seconds; needs a CUDA GPU).

    The result is saved per device and used by `memfit plan` and `memfit estimate` whenever they
    predict for that device. With --host, the host's rates are saved instead, used when they
    plan for this machine.
    """
    from dataclasses import asdict

    if host:
        _calibrate_host(dry_run, fmt)
        return

    from memfit.cost import Calibration, save_calibration
    from memfit.measure.calibrate import calibrate as run_calibration

    silent = fmt == "json" or quiet
    progress = (lambda _: None) if silent else (lambda what: click.echo(f"timing {what}"))
    measured, calibration = run_calibration(progress=progress)
    path = None if dry_run else save_calibration(calibration)
    if quiet:
        return
    if fmt == "json":
        data = {"measured": asdict(measured), "calibration": asdict(calibration)}
        click.echo(json.dumps({**data, "saved_to": str(path) if path else None}, indent=2))
        return
    default = Calibration()
    click.echo(
        f"{measured.device}: bf16 matmul {measured.matmul_flops / 1e12:.0f} TFLOP/s, "
        f"copy {measured.copy_bytes_s / 1e9:.0f} GB/s, {1e6 * measured.kernel_s:.1f} us per kernel"
    )
    for name in ("matmul_efficiency", "bandwidth_efficiency", "kernel_s", "host_forward_op_s"):
        click.echo(
            f"  {name:<21} {getattr(calibration, name):.4g} (default {getattr(default, name):.4g})"
        )
    click.echo(f"saved to {path}" if path else "not saved (--dry-run)")


def _calibrate_host(dry_run: bool, fmt: str) -> None:
    from dataclasses import asdict

    from memfit.measure.host import measure_host
    from memfit.offload_cost import save_host_calibration

    progress = (lambda _: None) if fmt == "json" else (lambda what: click.echo(f"timing {what}"))
    rates = measure_host(progress=progress)
    path = None if dry_run else save_host_calibration(rates.adam_params_s, rates.pcie_bytes_s)
    if fmt == "json":
        click.echo(json.dumps({**asdict(rates), "saved_to": str(path) if path else None}))
        return
    pcie = f", pinned copies {rates.pcie_bytes_s / 1e9:.1f} GB/s" if rates.pcie_bytes_s else ""
    click.echo(
        f"host: fused AdamW {rates.adam_params_s / 1e9:.2f}e9 params/s with {rates.threads} "
        f"threads{pcie}"
    )
    click.echo(f"saved to {path}" if path else "not saved (--dry-run)")
