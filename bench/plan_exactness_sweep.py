"""Does a plan train the same model, on every family the libraries offer? (CPU only)

The tests prove each technique exact on models built for them; this sweep checks the promise on
the families nobody built against. For each model (sources below; real weights, fp32, on this
CPU) it plans at two budgets that force techniques (``memfit.plan`` for an H200, bf16-mixed,
AdamW: 80% and 60% of the unmodified step's activations above its model state), applies each plan
to a copy of the model and runs two fused AdamW steps in fp32 beside the plain step on the same
batches, and records:

* ``same``: losses, parameters and buffers after both steps equal the plain step's (bit for bit,
  or to ``RTOL`` where a technique sums in another order: the chunked loss, micro-batching);
* ``DIFFERENT``: they are not, in fp32 nor when both steps run again in float64 (the largest
  relative gap and where): a memfit bug, unless the model draws random numbers in training that
  dropout-off does not stop (micro-batches draw others);
* ``same-fp64``: they differ in fp32 beyond ``RTOL`` but agree to ``RTOL64`` in float64: fp32
  rounding, amplified by the model (ReLU's kink: an activation within rounding of 0 flips its
  gradient, so a last-bit change in step 1, another summation order or thread count, changes
  step 2's gradients by percents; BiT's GroupNorm+ReLU), not the technique;
* ``FAILED``: applying or running the plan raised what the plain step did not: a memfit bug;
* ``refused`` (a MemfitError while planning, or while applying the plan in fp32: a plan with the
  optimizer on the host in bf16, with its message), ``unmodified`` (the plan has no technique),
  ``skip`` (the library cannot build or train the model at the sweep's size).

Sources (``--source``, several allowed): ``hf-causal``, ``hf-mlm``, ``hf-seq2seq`` (every model
type of transformers' auto class, its default config shrunk to 2 layers and a width of 64, a
vocabulary of 1,024; dropout off, since micro-batches draw other masks; no KV cache),
``hf-image`` (the same for image classification), ``timm`` (the first model of each family),
``torchvision`` (every classification model); vision models up to ``MAX_VISION_PARAMETERS``,
dropout and drop-path off, the loss the mean square of the output.

    python bench/plan_exactness_sweep.py --source hf-causal --out DIR      # ~45 min on 2 cores
    python bench/plan_exactness_sweep.py --source hf-causal --only llama,gemma2 --out DIR

Writes DIR/plan_exactness_sweep.json (versions, rows, counts per source).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import resource
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.errors import MemfitError  # noqa: E402
from memfit.step.train_step import TrainStep  # noqa: E402
from robustness_sweep import _two_layers, hf_auto  # noqa: E402

ALARM_S = 300
MEMORY_LIMIT = 16 * 2**30  # address space of each case's process
FRACTIONS = (0.8, 0.6)  # of the unmodified activations, above the model state
RTOL = 1e-4  # relative, of a parameter's largest entry, after two AdamW steps at lr 1e-3
FLOOR = 1e-2  # the least parameter scale a gap is relative to (weights start near 0.02 std)
RTOL64 = 1e-9  # the same gap when both sides run again in float64 (rounding leaves ~1e-14)
EPS = 1e-3  # AdamW's: large, so that a gradient within rounding of 0 moves its weight by as little
MAX_PARAMETERS = 40_000_000
MAX_VISION_PARAMETERS = 30_000_000
BATCH, POSITIONS, VOCAB = 8, 512, 1024
IMAGES = 16
SEEDS = (1, 2)  # the batches of the two steps
WIDTHS = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "embed_dim", "dim"), 64),
    **dict.fromkeys(("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size"), 128),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads"), 4),
    **dict.fromkeys(("encoder_attention_heads", "decoder_attention_heads"), 4),
    **dict.fromkeys(("encoder_ffn_dim", "decoder_ffn_dim"), 128),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads"), 2),
    "head_dim": 16,
    "vocab_size": VOCAB,
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts"), 4),
    "num_experts_per_tok": 2,
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size"), 64),
}
SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "unk_token_id")
SOURCES = ("hf-causal", "hf-mlm", "hf-seq2seq", "hf-image", "timm", "torchvision")


@dataclass
class Case:
    """One model of a source: how to build it, its batches and its loss (None: its own)."""

    name: str
    build: Callable[[], torch.nn.Module] | None
    batch: Callable[[int], Any] | None = None
    loss_fn: Any = None
    why: str = ""  # why it is skipped (build None)


def _shrunk(config: Any) -> Any:
    """``config`` at 2 layers and the small widths above (only the keys it has; not for
    convolutional stages, whose widths are lists), no dropout."""
    config = copy.deepcopy(config)
    if not hasattr(config, "hidden_sizes"):  # convolutional stages: left as they are
        config = _two_layers(config)
        for key, value in WIDTHS.items():
            current = getattr(config, key, None)
            if isinstance(current, int) and not isinstance(current, bool):
                setattr(config, key, value)
    starts = getattr(config, "decoder_start_token_id", None)
    if getattr(config, "is_encoder_decoder", False) and starts is None:
        config.decoder_start_token_id = config.pad_token_id or 0  # T5's config leaves it out
    for key, value in vars(config).items():
        if "drop" in key and isinstance(value, float):
            setattr(config, key, 0.0)
    # no KV cache in training, as memfit's checkpointing and Hugging Face's set it: with the
    # layer counts shrunk, a looped model (Dory) calls a layer twice, and the second call would
    # attend to the first's cached keys too
    config.use_cache = False
    for key in SPECIAL_IDS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= VOCAB:
            setattr(config, key, VOCAB - 1)
    return config


def _hf(source: str, only: set[str] | None) -> Iterator[Case]:
    import transformers

    names, model_class = hf_auto(source)
    for model_type in names:
        if only and model_type not in only:
            continue
        try:
            config = _shrunk(transformers.AutoConfig.for_model(model_type))
            with torch.device("meta"):
                meta = model_class.from_config(config)
        except Exception as error:  # the library's own limits
            yield Case(model_type, None, why=f"{type(error).__name__}: {error}"[:200])
            continue
        count = sum(p.numel() for p in meta.parameters())
        if count > MAX_PARAMETERS:
            yield Case(model_type, None, why=f"{count / 1e6:.0f}M parameters at small widths")
            continue

        def build(c: Any = config) -> torch.nn.Module:
            torch.manual_seed(0)
            return model_class.from_config(copy.deepcopy(c))  # models may write to theirs

        if source == "hf-image":
            size = getattr(config, "image_size", 224)
            size = min(size if isinstance(size, int) else size[0], 224)
            shape = (IMAGES, getattr(config, "num_channels", 3), size, size)
            yield Case(model_type, build, functools.partial(_images, shape, labels=True))
        else:
            vocab = getattr(config, "vocab_size", None) or VOCAB
            labelled = POSITIONS // 2 if source == "hf-seq2seq" else POSITIONS
            yield Case(model_type, build, functools.partial(_tokens, vocab, labelled))


def _vision(source: str, only: set[str] | None) -> Iterator[Case]:
    make: Callable[[str], torch.nn.Module]
    if source == "timm":
        import timm

        families: dict[str, str] = {}
        for name in timm.list_models():
            families.setdefault(name.split("_")[0].rstrip("0123456789"), name)
        names = sorted(families.values())
        make = functools.partial(timm.create_model, pretrained=False)
    else:
        import torchvision

        names = sorted(torchvision.models.list_models(module=torchvision.models))
        make = torchvision.models.get_model
    for name in names:
        if only and name not in only:
            continue
        try:
            with torch.device("meta"):
                meta = make(name)
        except Exception as error:
            yield Case(name, None, why=f"{type(error).__name__}: {error}"[:200])
            continue
        count = sum(p.numel() for p in meta.parameters())
        if count > MAX_VISION_PARAMETERS:
            yield Case(name, None, why=f"{count / 1e6:.0f}M parameters")
            continue
        config = getattr(meta, "pretrained_cfg", None)
        size = min(config.get("input_size", (3, 224, 224))[-1], 224) if config else 224

        def build(n: str = name) -> torch.nn.Module:
            torch.manual_seed(0)
            return _without_dropout(make(n))

        yield Case(name, build, functools.partial(_images, (IMAGES, 3, size, size)), _mean)


def _without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        if isinstance(getattr(module, "drop_prob", None), float):
            module.drop_prob = 0.0  # timm's DropPath
    return model


def _mean(output: Any, batch: Any) -> torch.Tensor:
    if isinstance(output, dict):
        output = output["out"]
    if isinstance(output, tuple | list):
        output = output[0]
    return (output if output.dtype == torch.float64 else output.float()).square().mean()


def _images(shape: tuple[int, ...], seed: int, labels: bool = False) -> Any:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(shape, generator=generator)
    if not labels:
        return pixels
    return {"pixel_values": pixels, "labels": torch.randint(0, 2, shape[:1], generator=generator)}


def _tokens(vocab: int, labelled: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, min(vocab, VOCAB), (BATCH, POSITIONS), generator=generator)
    return {"input_ids": ids, "labels": ids[:, :labelled].clone()}


def _budget(model: torch.nn.Module, case: Case, fraction: float) -> int:
    unmodified = memfit.estimate(model, case.batch(0), device="h200", loss_fn=case.loss_fn)
    state = sum(v for k, v in unmodified.by_category.items() if k in ("param", "grad", "optimizer"))
    return int(state + fraction * (unmodified.peak_reserved - state))


def _adamw(model: torch.nn.Module) -> torch.optim.AdamW:
    # fused: memfit's plans switch AdamW to its fused kernel (FusedOptimizer), whose rounding
    # differs from the default kernel's; near-zero gradients (a bias before a normalization)
    # turn that into visible gaps after two steps, so both sides use it
    return torch.optim.AdamW(model.parameters(), lr=1e-3, eps=EPS, fused=True)


def _float64(batch: Any) -> Any:
    """``batch`` with its floating-point tensors in float64 (ids and labels as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch.double() if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {key: _float64(value) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(_float64(value) for value in batch)
    return batch


def _train(step: Any, case: Case, float64: bool = False) -> list[float]:
    losses = []
    for seed in SEEDS:
        torch.manual_seed(100 + seed)  # random draws alike (checkpointing replays the RNG)
        batch = case.batch(seed)
        losses.append(float(step(_float64(batch) if float64 else batch)))
    return losses


def _gap(plain: torch.nn.Module, planned: torch.nn.Module) -> tuple[float, str]:
    """The largest relative difference between the two models' parameters and buffers
    (BatchNorm's running statistics), and where."""
    worst, where = 0.0, ""
    pairs = zip(plain.state_dict().items(), planned.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        if not a.is_floating_point():
            if not torch.equal(a, b):  # BatchNorm's batch counter, say
                return float("inf"), name
            continue
        if not a.numel():
            continue
        # of the larger of the weight and FLOOR: a bias that starts at 0 and has no gradient
        # in exact arithmetic (attention's key bias) moves by rounding alone, both ways
        gap = (a - b).abs().max().item() / max(a.abs().max().item(), FLOOR)
        if gap > worst:
            worst, where = gap, name
    return worst, where


class _Plain:
    """The plain step's losses and trained model, made once per case."""

    def __init__(self, case: Case, float64: bool = False) -> None:
        assert case.build is not None
        self.model = case.build().double() if float64 else case.build()
        step = TrainStep(self.model, _adamw(self.model), loss_fn=case.loss_fn, precision="fp32")
        self.losses = _train(step, case, float64)


def check(case: Case, plain: _Plain, fraction: float) -> dict[str, Any]:
    """One model at one budget: the row's fields."""
    assert case.build is not None
    model = case.build()
    row: dict[str, Any] = {"fraction": fraction}
    started = time.perf_counter()
    try:
        budget = _budget(model, case, fraction)
        plan = memfit.plan(model, case.batch(0), budget=budget, device="h200", loss_fn=case.loss_fn)
    except MemfitError as error:
        return {**row, "status": "refused", "detail": f"{type(error).__name__}: {error}"[:400]}
    row.update(plan=plan.label, plan_s=round(time.perf_counter() - started, 1))
    if not plan.techniques:
        return {**row, "status": "unmodified"}
    try:
        step = memfit.apply(plan, model, _adamw(model), loss_fn=case.loss_fn, precision="fp32")
        losses = _train(step, case)
        plan.undo(model)
    except MemfitError as error:  # a plan that cannot run in fp32 (its host optimizer's dtype)
        return {**row, "status": "refused", "detail": f"apply: {error}"[:400]}
    except Exception as error:  # a memfit bug: recorded
        return {**row, "status": "FAILED", "detail": f"{type(error).__name__}: {error}"[:400]}
    loss_gap, gap, where = _gaps(plain, losses, model)
    same = loss_gap <= RTOL and gap <= RTOL
    row.update(status="same" if same else "DIFFERENT", loss_gap=loss_gap, param_gap=gap)
    if not same:
        row["worst"] = where
        row.update(_again_in_float64(case, plan))
    return row


def _gaps(plain: _Plain, losses: list[float], model: torch.nn.Module) -> tuple[float, float, str]:
    pairs = zip(plain.losses, losses, strict=True)
    loss_gap = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs)
    return (loss_gap, *_gap(plain.model, model))


def _again_in_float64(case: Case, plan: Any) -> dict[str, Any]:
    """The plain and the planned steps again, model and batches in float64: a gap that fp32
    rounding made shrinks to ~1e-14 (status ``same-fp64``); a technique's error stays."""
    try:
        plain = _Plain(case, float64=True)
        model = case.build().double()
        step = memfit.apply(plan, model, _adamw(model), loss_fn=case.loss_fn, precision="fp32")
        losses = _train(step, case, float64=True)
        plan.undo(model)
    except _Alarm:
        return {"fp64": "timed out"}
    except Exception as error:  # a technique without float64 kernels: the fp32 verdict stands
        return {"fp64": f"{type(error).__name__}: {error}"[:200]}
    loss_gap, gap, where = _gaps(plain, losses, model)
    fields = {"loss_gap_fp64": loss_gap, "param_gap_fp64": gap, "worst_fp64": where}
    if loss_gap <= RTOL64 and gap <= RTOL64:
        fields["status"] = "same-fp64"
    return fields


def isolated_rows(case: Case) -> list[dict[str, Any]]:
    """The case's rows, computed in a forked process under ``MEMORY_LIMIT`` of address space:
    a model whose plain step takes tens of GB on the CPU (one did, 23 GB, and the kernel killed
    the sweep) is skipped, and what one case leaves behind does not stay for the next."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
        try:
            rows = list(rows_of(case))
        except BaseException as error:  # noqa: BLE001 (MemoryError included): reported
            rows = [{"status": "FAILED", "detail": f"sweep: {error!r}"[:400]}]
        with os.fdopen(write, "w") as pipe:
            json.dump(rows, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    _, status = os.waitpid(pid, 0)
    if not answer:
        return [{"status": "skip", "detail": f"its process ended without an answer ({status})"}]
    return json.loads(answer)


def rows_of(case: Case) -> Iterator[dict[str, Any]]:
    """The case's rows: one per budget, or one saying why it was skipped."""
    if case.build is None:
        yield {"status": "skip", "detail": case.why}
        return
    signal.alarm(ALARM_S)
    try:  # the plain step first: a model that does not train at this size is the library's
        plain = _Plain(case)
    except (Exception, _Alarm) as error:
        yield {"status": "skip", "detail": f"plain step: {type(error).__name__}: {error}"[:400]}
        return
    finally:
        signal.alarm(0)
    for fraction in FRACTIONS:
        signal.alarm(ALARM_S)
        try:
            yield check(case, plain, fraction)
        except _Alarm:
            yield {"fraction": fraction, "status": "TIMEOUT"}
        except Exception as error:  # building or estimating: recorded, the sweep goes on
            yield {"fraction": fraction, "status": "FAILED", "detail": repr(error)[:400]}
        finally:
            signal.alarm(0)


class _Alarm(Exception):
    pass


def _ring(*_: Any) -> None:
    raise _Alarm


def sweep(sources: list[str], only: set[str] | None, out: Path) -> dict[str, Any]:
    signal.signal(signal.SIGALRM, _ring)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("transformers", "timm", "torchvision"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    result: dict[str, Any] = {"versions": versions, "rows": []}
    path = out / "plan_exactness_sweep.json"
    if path.exists():  # another source's rows: kept
        result["rows"] = [r for r in json.loads(path.read_text())["rows"]
                          if r["source"] not in sources]  # fmt: skip
    for source in sources:
        cases = _vision(source, only) if source in ("timm", "torchvision") else _hf(source, only)
        for case in cases:
            for row in isolated_rows(case):
                result["rows"].append({"source": source, "model": case.name, **row})
                status = f"{row['status']:10s} {row.get('fraction', '')}"
                print(f"{source:11s} {case.name:28s} {status} {row.get('plan', '')}", flush=True)
                if row.get("detail"):
                    print(f"{'':40s} {row['detail'][:300]}", flush=True)
            result["counts"] = _counts(result["rows"])
            path.write_text(json.dumps(result, indent=1))
    return result


def _counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        counts.setdefault(row["source"], Counter())[row["status"]] += 1
    return {source: dict(counter) for source, counter in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source", nargs="+", choices=SOURCES, default=["hf-causal"])
    parser.add_argument("--only", help="comma-separated model names")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    only = set(args.only.split(",")) if args.only else None
    print(json.dumps(sweep(args.source, only, args.out)["counts"]))


if __name__ == "__main__":
    main()
