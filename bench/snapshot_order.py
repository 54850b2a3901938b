"""Does reading a snapshot's phases from allocation order agree with its stacks, on real runs?

On a CUDA GPU, records memory snapshots with ``stacks="python"`` of a few training loops that
memfit was not built against (Hugging Face GPT-2 and LLaMA at small sizes, foreach and fused
AdamW, SGD with momentum, three steps each), then classifies each twice: from its stacks
(``memfit.snapshot.profile.categorize``) and from allocation order alone after removing every
frame (``memfit.snapshot.order``). Writes ``DIR/snapshot_order.json``: per run, the share of
events whose phase agrees, the share of allocations whose category agrees, the bytes at the peak
by category both ways, and the snapshot sizes; and each run's snapshot without its stacks,
``DIR/<run>_nostacks.pickle.gz`` (a fixture for ``memfit.snapshot.order``).

python bench/snapshot_order.py --out DIR      # on the GPU machine (about a minute)
python bench/snapshot_order.py --smoke --out DIR
    # on a CPU: the same comparison on the committed tiny fixture (no recording)
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.profile import Category  # noqa: E402
from memfit.snapshot.load import loads_snapshot  # noqa: E402
from memfit.snapshot.order import infer_from_order  # noqa: E402
from memfit.snapshot.profile import categorize  # noqa: E402
from memfit.snapshot.trace import replay  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests/snapshot/fixtures/tiny_train.pickle"


def without_stacks(snapshot: dict[str, Any]) -> dict[str, Any]:
    strip = ("frames", "user_metadata")
    return {
        **snapshot,
        "device_traces": [
            [{k: v for k, v in e.items() if k not in strip} for e in trace]
            for trace in snapshot["device_traces"]
        ],
        "segments": [
            {**s, "blocks": [{k: v for k, v in b.items() if k != "frames"} for b in s["blocks"]]}
            for s in snapshot["segments"]
        ],
    }


def at_peak(trace: Any, categories: list[Category]) -> dict[str, int]:
    peak = trace.peak_index
    out: dict[str, int] = {}
    for a, c in zip(trace.allocations, categories, strict=True):
        if a.start <= peak < a.end:
            out[c.value] = out.get(c.value, 0) + a.rounded
    return out


def compare(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Stacks against order on one snapshot."""
    stacked = replay(snapshot)
    expected = categorize(stacked)
    inferred = infer_from_order(replay(without_stacks(snapshot)))
    if inferred is None:
        return {"found_steps": False}
    got = categorize(inferred)
    phases = sum(a is b for a, b in zip(stacked.phases, inferred.phases, strict=True))
    same = sum(a is b for a, b in zip(expected, got, strict=True))
    return {
        "found_steps": True,
        "events": stacked.num_events,
        "allocations": len(expected),
        "phase_agreement": phases / max(1, stacked.num_events),
        "category_agreement": same / max(1, len(expected)),
        "at_peak_from_stacks": at_peak(stacked, expected),
        "at_peak_from_order": at_peak(inferred, got),
    }


def record(build: Any, optimizer: Any, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    try:
        with torch.device("cuda"):
            model = build()
        opt = optimizer(model.parameters())
        for _ in range(3):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        data = pickle.dumps(torch.cuda.memory._snapshot())
    finally:
        torch.cuda.memory._record_memory_history(None)
    return loads_snapshot(data, name="recorded")


def runs() -> dict[str, tuple[Any, Any, dict[str, torch.Tensor]]]:
    import transformers

    def gpt2() -> Any:
        config = transformers.GPT2Config(n_layer=4, attn_implementation="sdpa")
        return transformers.GPT2LMHeadModel(config)

    def llama() -> Any:
        config = transformers.LlamaConfig(
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=4,
            num_attention_heads=8,
            vocab_size=32000,
            attn_implementation="sdpa",
        )
        return transformers.LlamaForCausalLM(config)

    ids = torch.randint(0, 32000, (4, 512), device="cuda")
    batch = {"input_ids": ids, "labels": ids}
    return {
        "hf-gpt2-4layers-adamw-foreach": (gpt2, lambda p: torch.optim.AdamW(p), batch),
        "hf-gpt2-4layers-adamw-fused": (gpt2, lambda p: torch.optim.AdamW(p, fused=True), batch),
        "hf-llama-4layers-adamw-foreach": (llama, lambda p: torch.optim.AdamW(p), batch),
        "hf-llama-4layers-sgd-momentum": (
            llama,
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
            batch,
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--smoke", action="store_true", help="CPU: the committed fixture only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"torch": torch.__version__}
    if args.smoke:
        results["tiny_train fixture"] = compare(loads_snapshot(FIXTURE.read_bytes()))
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --smoke)", file=sys.stderr)
            return 2
        results["gpu"] = torch.cuda.get_device_name()
        for name, (build, optimizer, batch) in runs().items():
            snapshot = record(build, optimizer, batch)
            results[name] = compare(snapshot)
            # the run without its stacks, for a test fixture of order-based classification
            stripped = pickle.dumps(without_stacks(snapshot))
            (args.out / f"{name}_nostacks.pickle.gz").write_bytes(gzip.compress(stripped))
            print(name, json.dumps(results[name]), flush=True)
    (args.out / "snapshot_order.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
