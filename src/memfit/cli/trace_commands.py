"""``memfit estimate`` and ``memfit plan``: trace a model's step, predict or plan it, print."""

from __future__ import annotations

import json
from typing import Any

import click

from memfit import result_cache
from memfit.cli.model_options import (
    answer_from_cache,
    model_option_values,
    model_options,
    read_plan,
    with_model_line,
)
from memfit.techniques import TABLE, Exactness, default_allow

__all__ = ["estimate", "plan_command"]


@click.command()
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
    plan_text_in = read_plan(plan_path)
    question = {**options, "fmt": fmt, "quiet": quiet, "budget": budget, "gpus": gpus}
    question.update(plan=plan_text_in, inference=inference)
    key = None if no_cache else result_cache.cache_key("estimate", question)
    if answer_from_cache(key, show=fmt == "table" and not quiet):
        return
    import memfit
    from memfit.devices import get_device
    from memfit.report.progress import Progress
    from memfit.report.text import profile_summary, profile_text, verdict
    from memfit.units import parse_budget

    values = model_option_values(**options)
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
        text = with_model_line(profile_text(profile, budget=limit), options["model"])
    click.echo(text)
    result_cache.store(key, {"stdout": text})


@click.command("plan")
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
@click.option(
    "--margin",
    type=float,
    help="Fraction of the budget kept free for prediction error (default: 0.02, and 0.05 for "
    "plans that recompute convolutions): 0 accepts plans predicted right at the budget.",
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
@click.option(
    "--measure",
    type=click.IntRange(min=0),
    default=0,
    help="On a machine with the target GPU: time the chosen plan and the next N-1 fastest "
    "predicted ones that fit, and take the fastest measured within the budget (never cached).",
)
def plan_command(
    fmt: str,
    quiet: bool,
    no_cache: bool,
    budget: str,
    blocks: str | None,
    allow: str | None,
    for_compile: bool,
    margin: float | None,
    out_path: str | None,
    gpus: int,
    measure: int,
    **options: Any,
) -> None:
    """Choose the fastest techniques that make MODEL's step fit --budget."""
    question = {**options, "fmt": fmt, "quiet": quiet, "budget": budget, "blocks": blocks}
    question["allow"] = allow
    question["gpus"] = gpus
    question["compile"] = for_compile
    question["margin"] = margin
    key = None if no_cache or measure else result_cache.cache_key("plan", question)
    if answer_from_cache(key, show=fmt == "table" and not quiet, out_path=out_path):
        return
    from pathlib import Path

    from memfit.outputs import check_output_file
    from memfit.plan.search import plan
    from memfit.report.plan_text import plan_text
    from memfit.report.progress import Progress

    if out_path is not None:
        check_output_file(out_path)
    values = model_option_values(**options)
    show = fmt == "table" and not quiet
    with Progress(f"planning {options['model']}", enabled=show) as bar:
        chosen = plan(
            **values,
            budget=budget,
            blocks=[b.strip() for b in blocks.split(",")] if blocks else None,
            allow=allow,
            compile=for_compile,
            margin=margin,
            gpus=gpus,
            measure=measure,
            progress=bar.set_stage,
        )
    if out_path:
        Path(out_path).write_text(chosen.to_json())
    if fmt == "json":
        text = chosen.to_json()
    elif quiet:
        text = chosen.label
    else:
        text = with_model_line(plan_text(chosen), options["model"])
    click.echo(text)
    result_cache.store(key, {"stdout": text, "plan": chosen.to_json()})
