"""GPU memory torchao's compiled low-bit Adam step allocates beyond its state, against memfit.

python bench/low_bit_step_probe.py --out DIR [--smoke]  ->  DIR/low_bit_step_probe.json

memfit predicts the buffers of ``torch.compile(single_param_adam)`` from inductor's CPU code
(``memfit.trace.low_bit.STEP_TEMPORARIES``: for 8-bit state, a float32 copy of each moment,
8 bytes per element of the parameter in all). On a GPU inductor writes Triton kernels, which may
fuse those buffers away; on Llama-3.2-3B's tied 128,256 x 3,072 embedding the prediction is
2.95 GiB, the difference between a plan that fits 24 GiB and one that does not. Per kind and
parameter shape: the peak of a compiled step (the third) above what was allocated before it,
and of the first (compiling) step, against the sum of ``step_temporaries``.
``--smoke`` runs tiny shapes on the CPU (code path only: no memory is measured there).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.trace.low_bit import step_temporaries  # noqa: E402

KINDS = {"8bit": "AdamW8bit", "4bit": "AdamW4bit", "fp8": "AdamWFp8"}
SHAPES = [(128256, 3072), (8192, 3072), (3072, 3072)]
SMOKE_SHAPES = [(512, 256)]


def _step_peak(optimizer: torch.optim.Optimizer, device: torch.device) -> int | None:
    """Bytes the step allocates above what was allocated before it (None off CUDA)."""
    if device.type != "cuda":
        optimizer.step()
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    optimizer.step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def probe(kind: str, shape: tuple[int, int], device: torch.device) -> dict:
    import torchao.optim

    param = torch.nn.Parameter(torch.randn(shape, device=device))
    param.grad = torch.randn_like(param)
    optimizer = getattr(torchao.optim, KINDS[kind])([param], lr=1e-3)
    first = _step_peak(optimizer, device)  # creates the state and compiles the kernel
    _step_peak(optimizer, device)
    compiled = _step_peak(optimizer, device)
    predicted = step_temporaries(param, optimizer.state[param]["exp_avg"], False)
    row = {
        "kind": kind,
        "shape": list(shape),
        "param_bytes": param.numel() * param.element_size(),
        "predicted_buffers": predicted,
        "predicted_bytes": sum(predicted),
        "first_step_peak_bytes": first,
        "compiled_step_peak_bytes": compiled,
    }
    if compiled is not None and sum(predicted):
        row["measured_over_predicted"] = compiled / sum(predicted)
    del optimizer, param
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    import torchao

    result: dict = {
        "environment": {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "torchao": torchao.__version__,
        },
        "rows": [],
        "errors": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for kind in KINDS:
        for shape in shapes:
            try:
                result["rows"].append(probe(kind, shape, device))
            except Exception as error:  # a kind or shape that fails: recorded, the rest go on
                result["errors"].append(
                    {
                        "kind": kind,
                        "shape": list(shape),
                        "error": repr(error),
                        "traceback": traceback.format_exc()[-2000:],
                    }  # fmt: skip
                )
            result["total_s"] = time.perf_counter() - started
            (args.out / "low_bit_step_probe.json").write_text(json.dumps(result, indent=1))
            print(json.dumps(result["rows"][-1] if result["rows"] else result["errors"][-1]))


if __name__ == "__main__":
    main()
