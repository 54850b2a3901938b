"""The options of the commands that trace a model (``estimate``, ``plan``), and their answers:
the model line, the plan file, the answer cache."""

from __future__ import annotations

from typing import Any

import click

from memfit import result_cache
from memfit.cli.group import FORMATS
from memfit.devices import DEFAULT_DEVICE

__all__ = [
    "model_options",
    "model_option_values",
    "with_model_line",
    "read_plan",
    "answer_from_cache",
]


def model_option_values(
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


def with_model_line(text: str, model: str) -> str:
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
            click.option("--format", "fmt", type=FORMATS, default="table", show_default=True),
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


def read_plan(path: str | None) -> str | None:
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


def answer_from_cache(key: str | None, *, show: bool, out_path: str | None = None) -> bool:
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
