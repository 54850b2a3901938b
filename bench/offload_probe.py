"""Probe: would offloading some blocks' saved activations to host memory beat recomputation?

python bench/offload_probe.py --out DIR  ->  DIR/offload_probe.json   (GPU machine)

Not a memfit technique yet: a measurement of its potential on Hugging Face LLaMA-1B (bs 4,
seq 2048, bf16-mixed, fused AdamW) at the memory of full checkpointing, where recomputation
alone stays within 4-6% of full checkpointing's time (bench/results/frontier_h200.json).

Inside memfit's lean saving hooks, the tensors a chosen block keeps for backward (those lean
saving keeps as they are) are copied to pinned host memory on a side stream as forward goes
on; the device copy is released once the copy is done (``record_stream``). When backward
reaches block ``i`` (a hook on its output's gradient), the blocks ``i-1`` and ``i-2`` are
copied back on the side stream; a block's tensors are waited for on first use. Copies are
bitwise, so gradients are unchanged.

Rows, one process: memfit's plan for full checkpointing's measured memory; layouts with the
first N blocks lean and offloaded, K blocks fully checkpointed, the rest lean; all with the
chunked loss x4. Also the raw pinned copy bandwidth, alone and beside matrix products.

Written on 2026-12-01 and not run yet: that session had no GPU time left.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import memfit  # noqa: E402
import memfit.step.lean_saving as lean  # noqa: E402
from frontier import OPTIMIZER, PRECISION, measure_plan  # noqa: E402
from models import EXTERNAL  # noqa: E402

GiB = 1024**3
NAME = "hf-llama-1b"
LAYERS = 16
BUDGET = 18673041408  # HF full checkpointing, measured (bench/results/frontier_h200.json)


class _Host:
    """A tensor copied to host memory; ``get`` gives it back on the device."""

    def __init__(self, offloader: Offloader, tensor: torch.Tensor, group: int) -> None:
        self.group = group
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        stream = offloader.stream
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.host.copy_(tensor, non_blocking=True)
        tensor.record_stream(stream)
        self.device: torch.Tensor | None = None
        self.ready: torch.cuda.Event | None = None
        self.offloader = offloader

    def load(self) -> None:
        if self.device is not None:
            return
        stream = self.offloader.stream
        self.device = torch.empty(self.host.shape, dtype=self.host.dtype, device="cuda")
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.device.copy_(self.host, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(stream)

    def get(self) -> torch.Tensor:
        self.offloader.reached(self.group)
        self.load()
        assert self.device is not None and self.ready is not None
        torch.cuda.current_stream().wait_event(self.ready)
        return self.device


class Offloader:
    def __init__(self, model, offload: set[int], min_bytes: int = 1 << 20, ahead: int = 2):
        self.offload, self.min_bytes, self.ahead = offload, min_bytes, ahead
        self.stream = torch.cuda.Stream()
        self.current: int | None = None
        self.groups: dict[int, list[_Host]] = defaultdict(list)
        self.seen: dict[tuple, _Host] = {}
        self.bytes = 0
        layers = model.model.layers
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(lambda m, a, i=i: self._enter(i))
            layer.register_forward_hook(lambda m, a, out, i=i: self._leave(i, out))

    def _enter(self, i: int) -> None:
        if not torch.is_grad_enabled():
            return
        if i == 0 and self.current is None:
            self.groups.clear()
            self.bytes = 0
        self.current = i

    def _leave(self, i: int, out) -> None:
        self.current = None
        self.seen.clear()
        tensor = out[0] if isinstance(out, tuple) else out
        if torch.is_grad_enabled() and isinstance(tensor, torch.Tensor) and tensor.requires_grad:
            tensor.register_hook(lambda grad, i=i: self.reached(i))

    def reached(self, i: int) -> None:
        for g in [g for g in self.groups if g > i]:
            del self.groups[g]  # backward is past them (autograd frees what it still holds)
        for g in range(i - 1, i - 1 - self.ahead, -1):
            for handle in self.groups.get(g, ()):
                handle.load()

    def maybe(self, tensor: torch.Tensor):
        i = self.current
        if i is None or i not in self.offload or not tensor.is_cuda:
            return None
        if tensor.numel() * tensor.element_size() < self.min_bytes:
            return None
        if tensor._is_view() or tensor.storage_offset() != 0 or not tensor.is_contiguous():
            return None
        key = (tensor.untyped_storage().data_ptr(), tensor._version, tuple(tensor.shape))
        if key not in self.seen:
            handle = _Host(self, tensor, i)
            self.seen[key] = handle
            self.groups[i].append(handle)
            self.bytes += tensor.numel() * tensor.element_size()
        return self.seen[key]


OFFLOADER: Offloader | None = None
_pack, _unpack = lean._pack, lean._unpack


def _swap(x):
    if isinstance(x, torch.Tensor):
        return OFFLOADER.maybe(x) or x
    return x


def _back(x):
    return x.get() if isinstance(x, _Host) else x


def _offload_pack(state, saved):
    packed = _pack(state, saved)
    if OFFLOADER is None:
        return packed
    if isinstance(packed, torch.Tensor):
        base = packed._base if packed._is_view() else None
        if base is not None and base.numel() == packed.numel():
            handle = OFFLOADER.maybe(base)  # a view covering its whole base: move the base
            if handle is not None:
                offset = int(packed.storage_offset())
                return lean._View(handle, tuple(packed.size()), tuple(packed.stride()), offset)
        return _swap(packed)
    if isinstance(packed, lean._View):
        inner = packed.inner
        if isinstance(inner, torch.Tensor):
            inner = _swap(inner)
        elif isinstance(inner, lean._Recompute):  # its inputs would keep gate and up alive
            inner = lean._Recompute(inner.function, tuple(_swap(x) for x in inner.inputs))
        return lean._View(inner, packed.size, packed.stride, packed.offset)
    return packed


def _offload_unpack(packed):
    if isinstance(packed, _Host):
        return packed.get()
    if isinstance(packed, lean._View):
        inner = packed.inner
        if isinstance(inner, _Host):
            inner = inner.get()
        elif isinstance(inner, lean._Recompute):
            inner = lean._Recompute(inner.function, tuple(_back(x) for x in inner.inputs))
        packed = lean._View(inner, packed.size, packed.stride, packed.offset)
    return _unpack(packed)


lean._pack, lean._unpack = _offload_pack, _offload_unpack


def layout(offloaded: int, full: int) -> memfit.Plan:
    """Blocks 0..N-1 lean and offloaded, N..N+K-1 fully checkpointed, the rest lean."""
    full_blocks = [f"model.layers.{i}" for i in range(offloaded, offloaded + full)]
    lean_blocks = [f"model.layers.{i}" for i in range(LAYERS)]
    lean_blocks = [b for b in lean_blocks if b not in full_blocks]
    norms = [f"{b}.{n}_layernorm" for b in lean_blocks for n in ("input", "post_attention")]
    techniques = [
        memfit.FusedGatedMLP(modules=tuple(f"model.layers.{i}.mlp" for i in range(LAYERS))),
        memfit.LeanAutocast(),
    ]
    if full_blocks:
        techniques.append(memfit.Checkpoint(modules=tuple(full_blocks)))
    techniques.append(memfit.Checkpoint(modules=tuple(norms)))
    techniques.append(memfit.ChunkedLoss(chunks=4))
    return memfit.Plan(techniques=tuple(techniques))


def bandwidth() -> dict:
    size = 1 * GiB
    dev = torch.empty(size, dtype=torch.uint8, device="cuda")
    host = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    out = {}
    for label, fn in (
        ("d2h", lambda: host.copy_(dev, non_blocking=True)),
        ("h2d", lambda: dev.copy_(host, non_blocking=True)),
    ):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        out[f"{label}_GBps"] = 5 * size / (time.perf_counter() - t) / 1e9
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(50):
        a @ a
    torch.cuda.synchronize()
    alone = time.perf_counter() - t
    t = time.perf_counter()
    with torch.cuda.stream(side):
        for _ in range(5):
            host.copy_(dev, non_blocking=True)
    for _ in range(50):
        a @ a
    torch.cuda.synchronize()
    out["matmul_alone_ms"] = alone * 1e3
    out["matmul_with_d2h_ms"] = (time.perf_counter() - t) * 1e3
    return out


def main() -> None:
    global OFFLOADER
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--layouts", default="0:8,3:6,4:5,5:4,6:3,4:4,5:3,6:2,7:2")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "budget": BUDGET,
        "rows": [],
    }
    save = lambda: (out / "offload_probe.json").write_text(json.dumps(result, indent=1))  # noqa: E731
    result["bandwidth"] = bandwidth()
    print(result["bandwidth"], flush=True)
    builder, spec, _, _ = EXTERNAL[NAME]
    try:
        started = time.perf_counter()
        plan = memfit.plan(
            builder,
            spec,
            budget=BUDGET,
            optimizer=OPTIMIZER,
            precision=PRECISION,
            device=memfit.get_device("cuda"),
        )
        row = {
            "label": "memfit plan",
            "plan": plan.describe() if hasattr(plan, "describe") else str(plan.profile.plan),
            "plan_s": time.perf_counter() - started,
        }
        row["measured"] = measure_plan(NAME, plan=plan)
        result["rows"].append(row)
    except Exception:
        result["errors"] = [traceback.format_exc()]
    save()
    for item in args.layouts.split(","):
        n, k = (int(x) for x in item.split(":"))
        label = f"offload {n} + full {k} + lean {LAYERS - n - k}"
        row: dict = {"label": label, "offloaded": n, "full": k}
        holder: dict = {}

        def prepare(model, n=n, holder=holder):
            # runs before apply; the patched hooks find the offloader through the global
            global OFFLOADER
            holder["off"] = Offloader(model, set(range(n)))
            OFFLOADER = holder["off"] if n else None

        try:
            OFFLOADER = None
            row["measured"] = measure_plan(NAME, plan=layout(n, k), prepare=prepare)
            row["offloaded_bytes_per_step"] = holder["off"].bytes
        except Exception:
            row["error"] = traceback.format_exc()[-2000:]
        OFFLOADER = None
        result["rows"].append(row)
        m = row.get("measured", {})
        figures = f"{m.get('peak_reserved', 0) / GiB:6.2f} GiB {m.get('step_s', 0) * 1e3:7.1f} ms"
        print(f"{label:32s} {figures}" + (" ERROR" if "error" in row else ""), flush=True)
        save()
    for row in result["rows"]:
        m = row.get("measured")
        if m:
            row["fits"] = m["peak_reserved"] <= BUDGET
    save()


if __name__ == "__main__":
    main()
