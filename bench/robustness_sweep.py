"""Does memfit.estimate predict, or clearly refuse, every model a library offers? (CPU only)

The validation zoo measures accuracy on 66 configurations; this sweep checks the other promise
of issue 12, on far more models: no crash, no hang, a MemfitError naming the cause otherwise.
For each model it estimates a bf16-mixed training step and an inference forward on the H200
device model, each under a 120 s alarm, and records ``ok``, ``refused`` (a MemfitError: its
message), ``FAILED`` (any other exception: a memfit bug) or ``TIMEOUT``, with the seconds taken.

Sources (``--source``, several allowed):

* ``hf-causal``, ``hf-mlm``, ``hf-seq2seq``, ``hf-image``: every model type of transformers'
  causal-LM, masked-LM, seq2seq-LM and image-classification auto classes, built from its default
  config with 2 layers (types whose config cannot be built that way are ``skip``);
* ``timm``: the first model of each timm family (its default input size);
* ``torchvision``: every torchvision classification model (224 x 224).

    python bench/robustness_sweep.py --source hf-causal timm torchvision --out DIR
    python bench/robustness_sweep.py --source timm --limit 3 --out DIR   # a quick look

Writes DIR/robustness_sweep.json (versions, rows, counts per source and mode).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
from memfit.errors import MemfitError  # noqa: E402

ALARM_S = 120
Candidate = tuple[str, Callable[[], torch.nn.Module], str, Any]  # name, builder, batch, loss_fn
LAYER_COUNTS = (
    "num_hidden_layers",
    "n_layer",
    "num_layers",
    "n_layers",
    "decoder_layers",
    "encoder_layers",
    "num_decoder_layers",
)


def _two_layers(config: Any) -> Any:
    for key in LAYER_COUNTS:
        if isinstance(getattr(config, key, None), int):
            setattr(config, key, 2)
    for sub in ("text_config", "decoder", "encoder", "vision_config"):
        nested = getattr(config, sub, None)
        if nested is not None and hasattr(nested, "to_dict"):
            _two_layers(nested)
    return config


def hf_auto(kind: str) -> tuple[list[str], Any]:
    """The model types of a source's transformers auto class, sorted, and the class."""
    import transformers
    import transformers.models.auto.modeling_auto as auto

    transformers.logging.set_verbosity_error()
    names, auto_class = {
        "hf-causal": (auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "AutoModelForCausalLM"),
        "hf-mlm": (auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, "AutoModelForMaskedLM"),
        "hf-seq2seq": (auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "AutoModelForSeq2SeqLM"),
        "hf-image": (
            auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
            "AutoModelForImageClassification",
        ),
    }[kind]
    return sorted(names), getattr(transformers, auto_class)


def _hf(kind: str) -> Iterator[Candidate | tuple[str, None, str, None]]:
    import transformers

    names, model_class = hf_auto(kind)
    for model_type in names:
        try:
            config = _two_layers(transformers.AutoConfig.for_model(model_type))
            with torch.device("meta"):
                model_class.from_config(config)
        except Exception:  # the library's own limits, not memfit's
            yield model_type, None, "", None
            continue
        vocab = getattr(config, "vocab_size", None) or 1000
        if kind == "hf-image":
            size = getattr(config, "image_size", 224)
            size = size if isinstance(size, int) else size[0]
            channels = getattr(config, "num_channels", 3)
            batch = f"pixel_values=float32[2,{channels},{size},{size}] labels=int64[2]<2"
        elif kind == "hf-seq2seq":
            batch = f"input_ids=int64[2,64]<{vocab} labels=int64[2,32]<{vocab}"
        else:
            batch = f"input_ids=int64[2,128]<{vocab} labels=int64[2,128]<{vocab}"
        yield model_type, (lambda c=config: model_class.from_config(c)), batch, None


def _first_output_mean(output: Any, batch: Any) -> torch.Tensor:
    if isinstance(output, dict):
        output = output["out"]
    if isinstance(output, tuple | list):
        output = output[0]
    return output.float().mean()


def _timm() -> Iterator[Candidate]:
    import timm

    families: dict[str, str] = {}
    for name in timm.list_models():
        families.setdefault(name.split("_")[0].rstrip("0123456789"), name)
    for name in sorted(families.values()):
        config = timm.get_pretrained_cfg(name)
        size = config.input_size[-1] if config is not None and config.input_size else 224
        builder = lambda n=name: timm.create_model(n, pretrained=False)  # noqa: E731
        yield name, builder, f"float32[2,3,{size},{size}]", _first_output_mean


def _torchvision() -> Iterator[Candidate]:
    import torchvision

    for name in torchvision.models.list_models(module=torchvision.models):
        builder = lambda n=name: torchvision.models.get_model(n)  # noqa: E731
        yield name, builder, "float32[2,3,224,224]", _first_output_mean


class _Alarm(Exception):
    pass


def _ring(*_: Any) -> None:
    raise _Alarm


def estimate_one(builder: Callable[[], torch.nn.Module], batch: str, loss_fn: Any, mode: str):
    """(status, detail, seconds) of one estimate under the alarm."""
    options: dict[str, Any] = dict(device="h200", precision="bf16-mixed")
    if mode == "inference":
        options["mode"] = "inference"
    elif loss_fn is not None:
        options["loss_fn"] = loss_fn
    started = time.perf_counter()
    signal.alarm(ALARM_S)
    try:
        memfit.estimate(builder, batch, **options)
        status, detail = "ok", ""
    except MemfitError as error:
        status, detail = "refused", f"{type(error).__name__}: {error}"[:400]
    except _Alarm:
        status, detail = "TIMEOUT", f"no answer in {ALARM_S} s"
    except Exception as error:  # a memfit bug: recorded
        status, detail = "FAILED", f"{type(error).__name__}: {error}"[:400]
    finally:
        signal.alarm(0)
    return status, detail, round(time.perf_counter() - started, 2)


def sweep(sources: list[str], limit: int | None, out: Path) -> dict[str, Any]:
    import platform

    signal.signal(signal.SIGALRM, _ring)
    result: dict[str, Any] = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "rows": [],
    }
    for module in ("transformers", "timm", "torchvision"):
        try:
            result["versions"][module] = __import__(module).__version__
        except ImportError:
            pass
    path = out / "robustness_sweep.json"
    for source in sources:
        candidates = {"timm": _timm, "torchvision": _torchvision}.get(source)
        found = candidates() if candidates else _hf(source)
        for count, (name, builder, batch, loss_fn) in enumerate(found):
            if limit is not None and count >= limit:
                break
            row: dict[str, Any] = {"source": source, "name": name, "batch": batch}
            if builder is None:
                row["train"] = row["inference"] = "skip"
            else:
                for mode in ("train", "inference"):
                    status, detail, seconds = estimate_one(builder, batch, loss_fn, mode)
                    row.update({mode: status, f"{mode}_s": seconds})
                    if detail:
                        row[f"{mode}_detail"] = detail
            result["rows"].append(row)
            print(f"{source:12s} {name:40s} {row['train']:8s} {row['inference']:8s}", flush=True)
            result["counts"] = _counts(result["rows"])
            path.write_text(json.dumps(result, indent=1))
    return result


def _counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for source in dict.fromkeys(r["source"] for r in rows):
        of_source = [r for r in rows if r["source"] == source]
        counts[source] = {
            mode: dict(Counter(r[mode] for r in of_source)) for mode in ("train", "inference")
        }
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    choices = ["hf-causal", "hf-mlm", "hf-seq2seq", "hf-image", "timm", "torchvision"]
    parser.add_argument("--source", nargs="+", choices=choices, default=choices)
    parser.add_argument("--limit", type=int, help="at most this many models per source")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = sweep(args.source, args.limit, out)
    print(json.dumps(result["counts"], indent=1))


if __name__ == "__main__":
    main()
