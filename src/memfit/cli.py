"""The ``memfit`` command line: parse, call the public API, print.

memfit estimate gpt2 --device h100-80gb
memfit estimate path/to/model.py:build --input "input_ids=int64[8,1024]<50257"
memfit devices | memfit zoo | memfit calibrate
memfit report gpt2 --out report.html | memfit compare a.json b.json

Each command imports what it needs when it runs: ``memfit --help`` and errors in the
arguments answer without importing torch.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from memfit import result_cache
from memfit.devices import DEFAULT_DEVICE
from memfit.errors import MemfitError
from memfit.techniques import TABLE, Exactness, default_allow

__all__ = ["main"]

_FORMATS = click.Choice(["table", "json"])


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


def _model_option_values(
    model: str,
    input_spec: str | None,
    loss_fn: str | None,
    forward: str | None,
    **options: Any,
) -> dict[str, Any]:
    """``model_options`` as keyword arguments of ``memfit.estimate`` and ``memfit.plan``.

    ``options``: optimizer, precision, device, batch_size, seq_len, clip_grad_norm and
    accumulate, passed on as given.
    """
    from memfit.loading import is_file_reference, load_callable
    from memfit.trace.cuda.stack import stack_for

    versions = options.pop("torch_version"), options.pop("cudnn_version")
    values: dict[str, Any] = {"model": model, "batch": input_spec, **options}
    values["stack"] = stack_for(*versions)
    if is_file_reference(model):
        values["model"] = load_callable(model, what="model builder")
        if input_spec is None:
            raise click.UsageError(
                "a model from a file needs --input, e.g. --input 'input_ids=int64[8,1024]<50257'"
            )
    if loss_fn:
        values["loss_fn"] = load_callable(loss_fn, what="loss function")
    if forward:
        values["forward"] = load_callable(forward, what="forward function")
    return values


def _what_model(model: str) -> str | None:
    """For a zoo name, one line saying which implementation it is (gpt2 is not hf-gpt2)."""
    from memfit import zoo
    from memfit.loading import is_file_reference

    if is_file_reference(model):
        return None
    entry = zoo.get(model)
    whose = {"memfit": "memfit's own implementation", "transformers": "Hugging Face transformers"}
    return f"zoo model       {entry.name} = {entry.description}; {whose[entry.implementation]}"


def _with_model_line(text: str, model: str) -> str:
    """``text`` with the zoo model's line after its "model" line (or its first line)."""
    described = _what_model(model)
    if described is None:
        return text
    lines = text.split("\n")
    at = next((i for i, line in enumerate(lines) if line.startswith("model ")), 0)
    return "\n".join(lines[: at + 1] + [described] + lines[at + 1 :])


def model_options(function: Any) -> Any:
    """The options every command that traces a model shares."""
    for option in reversed(
        [
            click.argument("model"),
            click.option("--batch-size", type=int, help="Batch size (zoo models)."),
            click.option("--seq-len", type=int, help="Sequence length (zoo language models)."),
            click.option(
                "--input",
                "input_spec",
                help="Inputs, e.g. 'input_ids=int64[8,1024]<50257 labels=int64[8,1024]<50257'.",
            ),
            click.option("--loss-fn", help="path/to/file.py:fn computing (output, batch) -> loss."),
            click.option("--forward", help="path/to/file.py:fn calling (model, batch) -> output."),
            click.option(
                "--optimizer",
                default="adamw",
                show_default=True,
                help="adamw, adamw-fused, adam, adam-fused, sgd, or none.",
            ),
            click.option(
                "--precision",
                default="bf16-mixed",
                show_default=True,
                help="fp32, bf16-mixed, fp16-mixed or bf16.",
            ),
            click.option(
                "--device", default=DEFAULT_DEVICE, show_default=True, help="See `memfit devices`."
            ),
            click.option(
                "--torch-version",
                help="The GPU machine's torch release, e.g. 2.13: memfit models its kernel "
                "rules (default 2.11, where the device model was measured).",
            ),
            click.option("--cudnn-version", help="The GPU machine's cuDNN, e.g. 9.19."),
            click.option(
                "--host-memory",
                help="The target host's RAM, e.g. 128GiB, for plans that offload to it "
                "(default: this machine's).",
            ),
            click.option(
                "--clip-grad-norm",
                type=float,
                help="The step clips gradients to this global norm before each update.",
            ),
            click.option(
                "--accumulate",
                type=int,
                default=1,
                show_default=True,
                help="Batches whose gradients accumulate before each update.",
            ),
            click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True),
            click.option(
                "--quiet",
                "-q",
                is_flag=True,
                help="No progress; print only the verdict line (plan: the plan's label).",
            ),
            click.option(
                "--no-cache",
                is_flag=True,
                help="Recompute, even if memfit has answered this question before.",
            ),
        ]
    ):
        function = option(function)
    return function


@cli.command()
@model_options
@click.option("--budget", help="Judge against this budget instead of the device, e.g. 24GiB.")
@click.option("--plan", "plan_path", help="Predict with this plan (memfit plan --out) in force.")
@click.option(
    "--gpus",
    type=int,
    help="Predict one rank of N GPUs sharded with FSDP2 (the plan's sharding, else one unit "
    "per repeated block); the batch is each rank's.",
)
@click.option(
    "--inference",
    is_flag=True,
    help="Predict inference (evaluation, serving): the model in eval(), one forward under "
    "torch.no_grad(); --optimizer is ignored.",
)
def estimate(
    fmt: str,
    quiet: bool,
    no_cache: bool,
    budget: str | None,
    plan_path: str | None,
    gpus: int | None,
    inference: bool,
    **options: Any,
) -> None:
    """Predict the GPU memory of one training (or, with --inference, inference) step of MODEL,
    without a GPU.

    MODEL is a zoo name (see `memfit zoo`) or path/to/file.py:builder.
    """
    plan_text_in = _read_plan(plan_path)
    question = {**options, "fmt": fmt, "quiet": quiet, "budget": budget, "gpus": gpus}
    question.update(plan=plan_text_in, inference=inference)
    key = None if no_cache else result_cache.cache_key("estimate", question)
    if _answer_from_cache(key, show=fmt == "table" and not quiet):
        return
    import memfit
    from memfit.devices import get_device
    from memfit.report.progress import Progress
    from memfit.report.text import profile_summary, profile_text, verdict
    from memfit.units import parse_budget

    values = _model_option_values(**options)
    values["mode"] = "inference" if inference else "train"
    spec = get_device(values["device"])
    limit = parse_budget(budget, of=spec.memory_bytes, device=spec.name) if budget else None
    show = fmt == "table" and not quiet
    plan = memfit.Plan.from_json(plan_text_in) if plan_text_in is not None else None
    with Progress(f"estimating {options['model']}", enabled=show) as bar:
        profile = memfit.estimate(**values, plan=plan, gpus=gpus, progress=bar.set_stage)
    if fmt == "json":
        text = json.dumps(profile_summary(profile, budget=limit), indent=2)
    elif quiet:
        text = verdict(profile, limit).text()
    else:
        text = _with_model_line(profile_text(profile, budget=limit), options["model"])
    click.echo(text)
    result_cache.store(key, {"stdout": text})


def _read_plan(path: str | None) -> str | None:
    """The text of a plan file, or a usage error naming it."""
    if path is None:
        return None
    from pathlib import Path

    try:
        return Path(path).read_text()
    except OSError as error:
        raise click.UsageError(
            f"--plan {path}: cannot read it ({error.strerror}); give a plan written by "
            f"memfit plan ... --out plan.json"
        ) from None


def _answer_from_cache(key: str | None, *, show: bool, out_path: str | None = None) -> bool:
    """Print the cached answer (and write its plan to ``out_path``); False when there is none."""
    answer = result_cache.load(key)
    if answer is None:
        return False
    if out_path is not None:
        if not isinstance(answer.get("plan"), str):
            return False
        from memfit.outputs import check_output_file

        check_output_file(out_path).write_text(answer["plan"])
    click.echo(answer["stdout"])
    if show:
        click.echo(
            f"(memfit answered this before: from its cache, {result_cache.cache_dir()}; "
            f"--no-cache recomputes)",
            err=True,
        )
    return True


@cli.command("plan")
@model_options
@click.option("--budget", required=True, help="Reserved-memory budget, e.g. 16GiB or 0.5.")
@click.option("--blocks", help="Comma-separated module patterns to checkpoint (default: found).")
@click.option(
    "--allow",
    help=f"Comma-separated techniques the planner may use (default: {', '.join(default_allow())};"
    f" leave out {', '.join(r.name for r in TABLE if r.exactness is Exactness.ROUNDING)} for "
    f"bit-identical math; --compile limits them for compiled models).",
)
@click.option(
    "--compile",
    "for_compile",
    is_flag=True,
    help="Plan for a model you torch.compile after applying the plan.",
)
@click.option("--out", "out_path", help="Also write the plan as JSON to this file.")
@click.option(
    "--gpus",
    type=int,
    default=1,
    show_default=True,
    help="GPUs of the job: more than 1 plans FSDP2 sharding; budget, memory, time and batch "
    "are per rank.",
)
def plan_command(
    fmt: str,
    quiet: bool,
    no_cache: bool,
    budget: str,
    blocks: str | None,
    allow: str | None,
    for_compile: bool,
    out_path: str | None,
    gpus: int,
    **options: Any,
) -> None:
    """Choose the fastest techniques that make MODEL's step fit --budget."""
    question = {**options, "fmt": fmt, "quiet": quiet, "budget": budget, "blocks": blocks}
    question["allow"] = allow
    question["gpus"] = gpus
    question["compile"] = for_compile
    key = None if no_cache else result_cache.cache_key("plan", question)
    if _answer_from_cache(key, show=fmt == "table" and not quiet, out_path=out_path):
        return
    from pathlib import Path

    from memfit.outputs import check_output_file
    from memfit.plan.search import plan
    from memfit.report.plan_text import plan_text
    from memfit.report.progress import Progress

    if out_path is not None:
        check_output_file(out_path)
    values = _model_option_values(**options)
    show = fmt == "table" and not quiet
    with Progress(f"planning {options['model']}", enabled=show) as bar:
        chosen = plan(
            **values,
            budget=budget,
            blocks=[b.strip() for b in blocks.split(",")] if blocks else None,
            allow=allow,
            compile=for_compile,
            gpus=gpus,
            progress=bar.set_stage,
        )
    if out_path:
        Path(out_path).write_text(chosen.to_json())
    if fmt == "json":
        text = chosen.to_json()
    elif quiet:
        text = chosen.label
    else:
        text = _with_model_line(plan_text(chosen), options["model"])
    click.echo(text)
    result_cache.store(key, {"stdout": text, "plan": chosen.to_json()})


_QUIET_NAMES = click.option("--quiet", "-q", is_flag=True, help="Print the names only, one a line.")


@cli.command()
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
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


@cli.command()
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
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


@cli.command()
@click.option("--dry-run", is_flag=True, help="Measure and print; do not save.")
@click.option("--format", "fmt", type=_FORMATS, default="table", show_default=True)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for a user error, with its message on stderr)."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="memfit", standalone_mode=False
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


if __name__ == "__main__":
    sys.exit(main())
