"""What cuDNN allocates inside a convolution: every allocation and free of the caching allocator
during one conv forward, and during its backward (data and weight), across shapes and dtypes.

    python bench/conv_probe.py --out DIR            # on the GPU machine (under 4 minutes)
    python bench/conv_probe.py --smoke --out DIR    # the same code paths on a CPU, tiny grid
    python bench/conv_probe.py --grid held-out --step-cases "" --out DIR
        # calls the rules were not read from (about a minute)

For each case (kernel, stride, groups, channels, spatial size, batch, dtype, channels_last;
cudnn.benchmark off and allow_tf32 on, PyTorch's defaults, unless the case says otherwise) it
runs the forward and the backward (both gradients, then each alone), each twice, recording both
calls with ``torch.cuda.memory._record_memory_history`` (the first call of a shape picks and
caches the cuDNN plan): per pass the allocations in order (size, live bytes when made, whether
freed inside the pass) and the segments cudaMalloc'd among them, the allocated bytes before /
after / at peak, reserved before / after, the outputs' bytes; the first call's under ``first``.
A case that fails (out of memory, unsupported) is recorded with its error and the run goes on;
no new case starts after ``--budget-s``.

Writes DIR/conv_probe.json ({"versions", "cases", "step_snapshots", "seconds"}) and
DIR/<case>_steps_snapshot.pickle: four training steps of the validation zoo's ResNet-50
bf16-mixed and ResNeXt-50 fp32 recorded from an empty allocator, to replay memfit's allocator
simulation on the real event order (their reserved peaks stay 3-9% under with the workspaces
modelled, bench/results/conv_compare.md). memfit's workspace classes
(``memfit.trace.cuda.convolution``) were read from the zoo's per-operator peaks, which cannot
tell the backward's two workspaces apart nor show the blocks' order; this measures both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from validation import _train, all_cases  # noqa: E402

# whole training steps recorded from an empty allocator, for replaying memfit's allocator
# simulation on the real event order (the zoo's reserved gaps on these)
STEP_CASES = ("tv-resnet50-bf16-mixed", "tv-resnext50-grouped-fp32-sgd")

MiB = 1 << 20


def grid(smoke: bool) -> list[dict[str, Any]]:
    """The cases: ResNet-like, grouped, depthwise and stem convolutions over dtypes and layouts."""
    shapes = [
        # (c_in, c_out, kernel, stride, groups, spatial)
        (3, 64, 7, 2, 1, 224),
        (64, 64, 1, 1, 1, 56),
        (64, 64, 3, 1, 1, 56),
        (256, 64, 1, 1, 1, 56),
        (64, 256, 1, 1, 1, 56),
        (256, 512, 1, 2, 1, 56),
        (128, 128, 3, 2, 1, 56),
        (256, 256, 3, 1, 1, 14),
        (1024, 256, 1, 1, 1, 14),
        (1024, 512, 1, 1, 1, 14),
        (512, 512, 1, 1, 1, 14),
        (512, 2048, 1, 1, 1, 7),
        (2048, 512, 1, 1, 1, 7),
        (512, 512, 3, 1, 1, 7),
        (128, 128, 3, 1, 32, 28),  # ResNeXt-style grouped
        (224, 224, 3, 1, 28, 28),  # RegNet-style groups of 8 channels
        (96, 96, 7, 1, 96, 56),  # ConvNeXt depthwise
        (144, 144, 3, 2, 144, 56),  # MobileNet / EfficientNet depthwise
        (32, 32, 3, 1, 32, 112),
        (96, 24, 1, 1, 1, 56),
    ]
    dtypes = ["float32", "bfloat16", "float16"]
    layouts = [False, True]
    batches = [32, 128]
    if smoke:
        shapes, batches, dtypes = shapes[:3] + shapes[-4:-2], [2], ["float32", "bfloat16"]
    cases = [
        _case(shape, dtype, channels_last, batch, smoke)
        for shape, dtype, channels_last, batch in itertools.product(
            shapes, dtypes, layouts, batches
        )
    ]
    # fp32 without TF32 (torch.backends.cudnn.allow_tf32 = False): another engine set
    cases += [dict(c, tf32=False) for c in cases if c["dtype"] == "float32" and c["batch"] == 32]
    return cases


def held_out_grid(smoke: bool) -> list[dict[str, Any]]:
    """Calls the rules of 4 December 2026 (late) were not read from, to check them: float16 and
    bf16 NCHW depthwise at stride 1 (the float16 float32-copy rule rests on five calls), TF32
    1x1s at 14x14 and 7x7 (x + dy + 8 MiB, or a power of two, in ResNeXt's recording) and
    channels-last float32 depthwise 7x7s and 1x1s (ConvNeXt-nano's rules), batch 64."""
    shapes = [
        (c, c, k, 1, c, side) for c in (16, 48, 96, 240) for k in (3, 5) for side in (56, 28, 14)
    ]
    dense = [(1024, 512, 1, 1, 1, 14), (512, 1024, 1, 1, 1, 14), (256, 1024, 1, 1, 1, 14)]
    dense += [(2048, 1024, 1, 1, 1, 7)]
    last = [(192, 192, 7, 1, 192, 28), (384, 384, 7, 1, 384, 14), (96, 384, 1, 1, 1, 56)]
    last += [(384, 96, 1, 1, 1, 56), (192, 768, 1, 1, 1, 28)]
    plan = [(s, "float16", False) for s in shapes] + [(s, "bfloat16", False) for s in shapes[::6]]
    plan += [(s, "float32", False) for s in dense] + [(s, "float32", True) for s in last]
    if smoke:
        plan = plan[:2] + plan[-2:]
    batch = 2 if smoke else 64
    return [_case(shape, dtype, layout, batch, smoke) for shape, dtype, layout in plan]


def _case(
    shape: tuple[int, ...], dtype: str, channels_last: bool, batch: int, smoke: bool
) -> dict[str, Any]:
    """One call: ``shape`` is (c_in, c_out, kernel, stride, groups, spatial); smoke caps the
    spatial size at 16. TF32 on, PyTorch's default."""
    c_in, c_out, kernel, stride, groups, spatial = shape
    return dict(
        c_in=c_in,
        c_out=c_out,
        kernel=kernel,
        stride=stride,
        groups=groups,
        spatial=min(spatial, 16) if smoke else spatial,
        batch=batch,
        dtype=dtype,
        channels_last=channels_last,
        tf32=True,
    )


def _storage_bytes(tensors: list[Any]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors if isinstance(t, torch.Tensor))


def _events(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    """The allocator's alloc / free_requested events of the recorded window, in order."""
    out = []
    for trace in snapshot.get("device_traces", []):
        for event in trace:
            if event["action"] in ("alloc", "free_requested"):
                out.append(
                    {"action": event["action"], "addr": event["addr"], "size": event["size"]}
                )
    return out


def _allocations(events: list[dict[str, Any]], live_before: int) -> list[dict[str, Any]]:
    """Allocations in order: size, live bytes when made, whether freed within the pass; and
    the segments cudaMalloc'd (or released) among them, as ``{"segment": action, "size"}``."""
    open_by_addr: dict[int, dict[str, Any]] = {}
    result = []
    live = live_before
    for event in events:
        if event["action"].startswith("segment"):
            result.append({"segment": event["action"], "size": event["size"]})
        elif event["action"] == "alloc":
            entry = {"size": event["size"], "live_before": live, "freed": False}
            open_by_addr[event["addr"]] = entry
            result.append(entry)
            live += event["size"]
        elif event["addr"] in open_by_addr:
            open_by_addr.pop(event["addr"])["freed"] = True
            live -= event["size"]
    return result


def _recorded(run: Any) -> dict[str, Any]:
    """One call of ``run()`` with every allocator event recorded, and its peaks."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    reserved_before = torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(context=None, max_entries=100_000)
    outputs = run()
    torch.cuda.synchronize()
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    result = {
        "before": before,
        "after": torch.cuda.memory_allocated(),
        "peak": torch.cuda.max_memory_allocated(),
        "reserved_before": reserved_before,
        "reserved_after": torch.cuda.memory_reserved(),
        "outputs_bytes": _storage_bytes(outputs),
        "allocations": _allocations(_events(snapshot), before),
    }
    del outputs
    return result


def measure_pass(run: Any, cuda: bool) -> dict[str, Any]:
    """The first call of a shape (cuDNN picks and caches its plan) and a second one, each
    recorded: a plan tried and dropped on the first call shows as an extra allocation there."""
    if not cuda:
        run()
        return {"outputs_bytes": _storage_bytes(run()), "first": {}, "allocations": []}
    first = _recorded(run)
    second = _recorded(run)
    second["first"] = first
    return second


def run_case(case: dict[str, Any], device: torch.device) -> dict[str, Any]:
    dtype = getattr(torch, case["dtype"])
    cuda = device.type == "cuda"
    torch.backends.cudnn.allow_tf32 = case["tf32"]
    fmt = torch.channels_last if case["channels_last"] else torch.contiguous_format
    x = torch.randn(
        case["batch"], case["c_in"], case["spatial"], case["spatial"], device=device, dtype=dtype
    ).contiguous(memory_format=fmt)
    w = torch.randn(
        case["c_out"],
        case["c_in"] // case["groups"],
        case["kernel"],
        case["kernel"],
        device=device,
        dtype=dtype,
    ).contiguous(memory_format=fmt)
    pad = case["kernel"] // 2
    args = dict(stride=case["stride"], padding=pad, groups=case["groups"])
    aten = torch.ops.aten

    def forward() -> list[Any]:
        return [F.conv2d(x, w, **args)]

    y = forward()[0]
    dy = torch.randn_like(y)

    def backward_pass(mask: list[bool]) -> Callable[[], list[Any]]:
        """convolution_backward for the gradients ``mask`` asks for: (input, weight, bias)."""

        def run() -> list[Any]:
            grads = aten.convolution_backward(
                dy,
                x,
                w,
                None,
                [args["stride"]] * 2,
                [pad] * 2,
                [1, 1],
                False,
                [0, 0],
                args["groups"],
                mask,
            )
            return [g for g in grads if g is not None]

        return run

    backward = backward_pass([True, True, False])
    backward_weight = backward_pass([False, True, False])
    backward_data = backward_pass([True, False, False])

    row = dict(case)
    row.update(
        input_bytes=x.untyped_storage().nbytes(),
        weight_bytes=w.untyped_storage().nbytes(),
        output_bytes=y.untyped_storage().nbytes(),
    )
    for name, run in (
        ("forward", forward),
        ("backward", backward),
        ("backward_data", backward_data),
        ("backward_weight", backward_weight),
    ):
        row[name] = measure_pass(run, cuda)
    return row


def snapshot_steps(out: Path, cuda: bool, smoke: bool, names: tuple[str, ...]) -> list[str]:
    """Four training steps of each of the zoo's configurations ``names`` from an empty
    allocator, recorded (no stacks): DIR/<case>_steps_snapshot.pickle, as
    bench/diag_snapshot.py does for GPT-2."""
    written = []
    for case in [c for c in all_cases() if c.name in names]:
        builder, spec = case.built(smoke)
        if not cuda:
            _train(case, builder, spec, "cpu", warmup=1, steps=0)
            continue
        torch.cuda.empty_cache()
        torch.cuda.memory._record_memory_history(context=None, max_entries=1_000_000)
        _train(case, builder, spec, "cuda", warmup=4, steps=0)
        torch.cuda.synchronize()
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        snapshot["memfit_peaks"] = {
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
        }
        path = out / f"{case.name}_steps_snapshot.pickle"
        path.write_bytes(pickle.dumps(snapshot))
        written.append(path.name)
        torch.cuda.empty_cache()
    return written


def versions() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory for conv_probe.json")
    parser.add_argument("--smoke", action="store_true", help="tiny grid on the CPU")
    parser.add_argument("--budget-s", type=float, default=180, help="stop starting new cases")
    parser.add_argument(
        "--grid",
        choices=["zoo", "held-out"],
        default="zoo",
        help="zoo: the calls the rules were read from; held-out: calls to check them on",
    )
    parser.add_argument(
        "--step-cases",
        default=",".join(STEP_CASES),
        help="validation-zoo configurations whose training steps are recorded (comma-separated)",
    )
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"versions": versions(), "cases": []}
    started = time.perf_counter()
    for case in (grid if args.grid == "zoo" else held_out_grid)(args.smoke):
        if time.perf_counter() - started > args.budget_s:
            result["stopped_at_budget"] = True
            break
        try:
            row = run_case(case, device)
        except Exception as error:  # out of memory or unsupported: recorded, the run goes on
            row = dict(case, error=f"{type(error).__name__}: {error}"[:500])
        if cuda:
            torch.cuda.empty_cache()
        result["cases"].append(row)
        (out / "conv_probe.json").write_text(json.dumps(result, indent=0))
    result["step_snapshots"] = snapshot_steps(
        out, cuda, args.smoke, tuple(args.step_cases.split(","))
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "conv_probe.json").write_text(json.dumps(result, indent=0))
    errors = sum("error" in row for row in result["cases"])
    print(f"{len(result['cases'])} cases, {errors} errors, {result['seconds']} s")


if __name__ == "__main__":
    main()
