"""OOMGuard, find_batch_size and LeakWatch on a real GPU, with llama-1b from memfit's zoo.

Run on the GPU machine:  python bench/guard.py --out DIR      (about 2 minutes on an H100)
Smoke test anywhere:     python bench/guard.py --out DIR --smoke   (tiny model, CPU, fake OOMs)

Sections (each guarded: a failure is recorded and the next section runs; DIR/guard.json is
rewritten after every section, so whatever ran is kept):

1. reference: unguarded fp32 training (TF32 off) of llama-1b, K steps on fixed batches, twice
   (the second run measures the GPU's own run-to-run difference).
2. overhead: plain and guarded steps interleaved on the same model, no OOM; median step times.
3. recovery: the same K steps under ``set_per_process_memory_fraction`` sized so that the full
   batch does not fit; the guard splits it. Compared with the reference (weights, losses) and
   with an unguarded hand-split run at the guard's micro-batch size (the exact counterpart); the
   cost of the failed attempt is reported in reference steps.
4. leak: LeakWatch on an evaluation loss summed without ``.item()`` (graph kept).
5. find_batch_size: the largest batch at the same sequence length; model and optimizer state
   checked to be restored exactly.

Prints a short table last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from memfit.guard import LeakWatch, OOMGuard, find_batch_size  # noqa: E402
from memfit.step.batch import micro_batch_sizes, split_batch  # noqa: E402

GiB = 1024**3


# ---- set-up -------------------------------------------------------------------------------


class Setup:
    """The model family, batches and device of one bench run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = args.smoke
        self.cuda = torch.cuda.is_available() and not args.smoke
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.batch_size, self.seq_len, self.steps = args.batch_size, args.seq_len, args.steps
        self.lr = 1e-4
        if self.smoke:
            from memfit.zoo.llama import Llama, LlamaConfig

            config = LlamaConfig(
                vocab_size=128,
                max_seq_len=64,
                dim=32,
                n_layers=2,
                n_heads=2,
                n_kv_heads=2,
                hidden_dim=64,
            )
            self.build: Callable[[], torch.nn.Module] = lambda: Llama(config)
            self.make: Callable[..., Any] = lambda b, s, device: {
                "input_ids": (ids := torch.randint(0, 128, (b, s), device=device)),
                "labels": ids,
            }
        else:
            from memfit.zoo import get

            entry = get("llama-1b")
            self.build = entry.build
            self.make = lambda b, s, device: entry.make_batch(b, s, device=device)
        self.fake_limit: int | None = None  # smoke: samples per micro-batch before a fake OOM
        torch.manual_seed(0)
        with torch.device(self.device):
            model = self.build()
        self.init_state = {
            k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
        }
        del model
        self.batches = []
        for i in range(self.steps):
            torch.manual_seed(1000 + i)
            self.batches.append(self.make(self.batch_size, self.seq_len, self.device))

    def fresh(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The initial weights, a new AdamW (and, in smoke mode, the fake memory limit)."""
        torch.manual_seed(0)
        with torch.device(self.device):
            model = self.build()
        model.load_state_dict(self.init_state)
        if self.smoke:

            def fake_oom(module: Any, args: Any, kwargs: Any) -> None:
                n = kwargs["input_ids"].shape[0]
                if self.fake_limit is not None and n > self.fake_limit:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")

            model.register_forward_pre_hook(fake_oom, with_kwargs=True)
        return model, torch.optim.AdamW(model.parameters(), lr=self.lr)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def clean() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def deterministic_fp32() -> Iterator[None]:
    """Full fp32 matmuls (no TF32), restored afterwards."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_float32_matmul_precision(),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.set_float32_matmul_precision(saved[2])


@contextlib.contextmanager
def memory_cap(fraction: float | None) -> Iterator[None]:
    """``set_per_process_memory_fraction`` inside the block only."""
    if fraction is None or not torch.cuda.is_available():
        yield
        return
    torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def make_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[Any], Any]:
    def step_fn(batch: Any) -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step_fn


def split_step(
    model: torch.nn.Module, opt: torch.optim.Optimizer, micro: list[int]
) -> Callable[[Any], Any]:
    """Unguarded gradient accumulation at the guard's micro-batch size of each step (what the
    guarded run must equal)."""
    calls = iter(micro)

    def step_fn(batch: Any) -> torch.Tensor:
        n = batch["input_ids"].shape[0]
        sizes = micro_batch_sizes(n, next(calls))
        total = torch.zeros((), device=batch["input_ids"].device)
        for part, size in zip(split_batch(batch, sizes), sizes, strict=True):
            loss = model(**part).loss
            (loss * (size / n)).backward()
            total += loss.detach() * (size / n)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    return step_fn


def run(
    setup: Setup, step_fn: Callable[[Any], Any], after: Callable[[], dict[str, Any]] | None = None
) -> dict[str, Any]:
    """All fixed batches once; per-step losses, times, ``after()`` records and peak memory."""
    losses, times, records = [], [], []
    clean()
    for batch in setup.batches:
        setup.sync()
        started = time.perf_counter()
        loss = step_fn(batch)
        setup.sync()
        times.append(time.perf_counter() - started)
        losses.append(float(loss))
        if after is not None:
            records.append(after())
    out: dict[str, Any] = {"losses": losses, "step_s": times}
    if records:
        out["per_step"] = records
    if setup.cuda:
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
        out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved()
        out["allocated_after_bytes"] = torch.cuda.memory_allocated()
    return out


def compare(
    model: torch.nn.Module, reference: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Weight difference to a reference, absolute and relative to the training update."""
    diff_sq = ref_sq = update_sq = 0.0
    max_abs = 0.0
    for name, p in model.state_dict().items():
        got = p.detach().double()
        ref = reference[name].to(got.device).double()
        delta = got - ref
        max_abs = max(max_abs, float(delta.abs().max()) if delta.numel() else 0.0)
        diff_sq += float((delta**2).sum())
        ref_sq += float((ref**2).sum())
        update_sq += float(((ref - initial[name].to(got.device).double()) ** 2).sum())
    return {
        "max_abs_diff": max_abs,
        "rel_l2_diff": (diff_sq / ref_sq) ** 0.5 if ref_sq else 0.0,
        "diff_over_update": (diff_sq / update_sq) ** 0.5 if update_sq else 0.0,
    }


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ---- sections ------------------------------------------------------------------------------


def reference(setup: Setup, shared: dict[str, Any]) -> dict[str, Any]:
    model, opt = setup.fresh()
    first = run(setup, make_step(model, opt))
    shared["reference_weights"] = weights(model)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model, opt
    model, opt = setup.fresh()
    second = run(setup, make_step(model, opt))
    floor = compare(model, shared["reference_weights"], setup.init_state)
    del model, opt
    shared["reference"] = first
    shared["grad_bytes"] = grad_bytes
    return {
        "first": first,
        "repeat": second,
        "repeat_vs_first": floor,
        "median_step_s": statistics.median(first["step_s"][1:] or first["step_s"]),
    }


def overhead(setup: Setup, shared: dict[str, Any], pairs: int) -> dict[str, Any]:
    model, opt = setup.fresh()
    plain = make_step(model, opt)
    guarded = OOMGuard(plain, optimizer=opt, model=model)
    batch = setup.batches[0]
    for _ in range(2):
        plain(batch)
        guarded(batch)
    times: dict[str, list[float]] = {"plain": [], "guarded": []}
    for i in range(pairs):
        order = [("plain", plain), ("guarded", guarded)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            setup.sync()
            started = time.perf_counter()
            fn(batch)
            setup.sync()
            times[name].append(time.perf_counter() - started)
    p, g = statistics.median(times["plain"]), statistics.median(times["guarded"])
    return {
        "pairs": pairs,
        "plain_step_s": times["plain"],
        "guarded_step_s": times["guarded"],
        "median_plain_s": p,
        "median_guarded_s": g,
        "overhead_pct": 100.0 * (g / p - 1.0),
        "snapshot_bytes": guarded.metrics.snapshot_bytes,
        "target_pct": 1.0,
    }


def cap_fraction(setup: Setup, shared: dict[str, Any], keep: float) -> dict[str, Any]:
    """A memory cap under which the full batch fails but a split one can fit."""
    ref = shared["reference"]
    base = ref["allocated_after_bytes"]  # parameters + optimizer state (gradients are None)
    grads = shared["grad_bytes"]
    activations = ref["peak_allocated_bytes"] - base - grads
    cap = base + grads + int(keep * activations) + GiB // 2
    total = torch.cuda.get_device_properties(0).total_memory
    return {
        "cap_bytes": cap,
        "fraction": cap / total,
        "base_bytes": base,
        "grad_bytes": grads,
        "activation_bytes": activations,
        "full_batch_peak_bytes": ref["peak_allocated_bytes"],
    }


def recovery(setup: Setup, shared: dict[str, Any], keep: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if setup.cuda:
        out["cap"] = cap_fraction(setup, shared, keep)
        fraction: float | None = out["cap"]["fraction"]
    else:
        fraction, setup.fake_limit = None, max(1, setup.batch_size // 2)
    model, opt = setup.fresh()
    guard = OOMGuard(make_step(model, opt), optimizer=opt, model=model, grow_after=1000)
    metrics = guard.metrics

    def after() -> dict[str, Any]:
        return {
            "micro_batch_size": metrics.micro_batch_size,
            "ooms": metrics.ooms,
            "recovery_s": metrics.recovery_s,
            "thrash_events": metrics.thrash_events,
        }

    with memory_cap(fraction):
        out["guarded"] = run(setup, guard, after)
    setup.fake_limit = None
    out["metrics"] = {k: v for k, v in vars(metrics).items() if k != "last_oom"}
    out["last_oom"] = metrics.last_oom.to_dict() if metrics.last_oom else None
    out["vs_reference"] = compare(model, shared["reference_weights"], setup.init_state)
    ref_losses = shared["reference"]["losses"]
    out["max_loss_diff_vs_reference"] = max(
        abs(a - b) for a, b in zip(out["guarded"]["losses"], ref_losses, strict=True)
    )
    per_step = out["guarded"]["per_step"]
    micro = [r["micro_batch_size"] or setup.batch_size for r in per_step]
    guarded_weights = weights(model)
    del model, opt, guard
    model, opt = setup.fresh()
    out["split_control"] = run(setup, split_step(model, opt, micro))
    out["vs_split_control"] = compare(model, guarded_weights, setup.init_state)
    out["max_loss_diff_split_control_vs_reference"] = max(
        abs(a - b) for a, b in zip(out["split_control"]["losses"], ref_losses, strict=True)
    )
    del model, opt
    ref_step = statistics.median(shared["reference"]["step_s"][1:] or shared["reference"]["step_s"])
    # extra wall time of the steps that caught an OOM, against the same step done split by hand
    ooms = [r["ooms"] for r in per_step]
    hit = [i for i, n in enumerate(ooms) if n > (ooms[i - 1] if i else 0)]
    extra = sum(out["guarded"]["step_s"][i] - out["split_control"]["step_s"][i] for i in hit)
    out["recovery"] = {
        "micro_batch_sizes": micro,
        "micro_batch_size": micro[-1],
        "steps_with_oom": hit,
        "failed_attempts_s": metrics.recovery_s,
        "extra_s_in_oom_steps": extra,
        "recovery_in_reference_steps": metrics.recovery_s / ref_step,
        "extra_in_reference_steps": extra / ref_step,
        "per_oom_in_reference_steps": metrics.recovery_s / ref_step / max(1, metrics.ooms),
        "target_steps": 2.0,
    }
    return out


def leak(setup: Setup, shared: dict[str, Any]) -> dict[str, Any]:
    model, opt = setup.fresh()
    watch = LeakWatch(warmup=2, patience=3, min_growth_bytes=16 * 1024**2 if setup.cuda else 1)
    seq = max(2, setup.seq_len // 2)
    torch.manual_seed(7)
    train = setup.make(1, seq, setup.device)
    evaluation = setup.make(1, seq, setup.device)
    step = make_step(model, opt)
    val_total: Any = 0.0
    times = []
    for _ in range(10):
        setup.sync()
        started = time.perf_counter()
        with watch.step():
            step(train)
            val_total = val_total + model(**evaluation).loss  # the bug: no .item(), no no_grad
        setup.sync()
        times.append(time.perf_counter() - started)
        if watch.reports:
            break
    report = watch.reports[0] if watch.reports else None
    del val_total, model, opt
    return {
        "detected_at_step": report.step if report else None,
        "growth_bytes": report.growth_bytes if report else None,
        "culprits": [c.describe() for c in report.culprits] if report else [],
        "step_s": times,
        "samples_bytes": watch.samples,
    }


def finder(setup: Setup, shared: dict[str, Any], use_estimate: bool) -> dict[str, Any]:
    model, opt = setup.fresh()
    step = make_step(model, opt)
    step(setup.batches[0])  # optimizer state exists, as mid-training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    started = time.perf_counter()
    result = find_batch_size(
        model,
        lambda b: setup.make(b, setup.seq_len, setup.device),
        optimizer=opt,
        step_fn=step,
        steps_per_trial=1,
        max_batch_size=256,
        use_estimate=use_estimate,
        start=None if use_estimate else setup.batch_size,
    )
    seconds = time.perf_counter() - started
    restored = all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    state_after = opt.state[next(model.parameters())]
    restored = restored and all(torch.equal(state_after[k], v) for k, v in state_before.items())
    del model, opt, before
    return {
        "batch_size": result.batch_size,
        "smallest_failing": result.smallest_failing,
        "predicted": result.predicted,
        "trials": [
            {
                "batch_size": t.batch_size,
                "fits": t.fits,
                "peak_allocated_bytes": t.peak_allocated_bytes,
                "peak_reserved_bytes": t.peak_reserved_bytes,
                "seconds": t.seconds,
            }
            for t in result.trials
        ],
        "seconds": seconds,
        "state_restored_exactly": restored,
    }


# ---- driver --------------------------------------------------------------------------------


def environment(setup: Setup) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "smoke": setup.smoke,
        "batch_size": setup.batch_size,
        "seq_len": setup.seq_len,
        "steps": setup.steps,
    }
    if setup.cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, total_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    try:
        root = Path(__file__).resolve().parents[1]
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception:
        env["commit"] = None
    return env


def table(results: dict[str, Any]) -> str:
    def get(*path: str) -> Any:
        node: Any = results
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return node

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [
        ("reference median step", fmt(get("reference", "median_step_s"), ".3f") + " s"),
        (
            "run-to-run weight diff (rel L2)",
            fmt(get("reference", "repeat_vs_first", "rel_l2_diff"), ".2e"),
        ),
        (
            "guard overhead, no OOM",
            fmt(get("overhead", "overhead_pct"), "+.2f") + " % (target <= 1 %)",
        ),
        ("capped run: OOMs caught", fmt(get("recovery", "metrics", "ooms"), "d")),
        ("capped run: micro-batch", fmt(get("recovery", "recovery", "micro_batch_size"), "d")),
        (
            "capped vs reference (rel L2)",
            fmt(get("recovery", "vs_reference", "rel_l2_diff"), ".2e"),
        ),
        (
            "capped vs hand-split (rel L2)",
            fmt(get("recovery", "vs_split_control", "rel_l2_diff"), ".2e"),
        ),
        (
            "hand-split loss diff vs reference",
            fmt(get("recovery", "max_loss_diff_split_control_vs_reference"), ".2e"),
        ),
        (
            "recovery cost per OOM",
            fmt(get("recovery", "recovery", "per_oom_in_reference_steps"), ".2f")
            + " steps (target <= 2)",
        ),
        ("leak detected at step", fmt(get("leak", "detected_at_step"), "d")),
        (
            "find_batch_size",
            fmt(get("find_batch_size", "batch_size"), "d")
            + " (predicted "
            + fmt(get("find_batch_size", "predicted"), "d")
            + ", "
            + fmt(get("find_batch_size", "seconds"), ".1f")
            + " s, restored "
            + str(get("find_batch_size", "state_restored_exactly"))
            + ")",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    failed = [
        name for name, value in results.items() if isinstance(value, dict) and "error" in value
    ]
    if failed:
        lines.append(f"{'sections that failed':<{width}}  {', '.join(failed)} (see guard.json)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU with fake OOMs")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=8, help="overhead: plain/guarded step pairs")
    parser.add_argument(
        "--keep",
        type=float,
        default=0.65,
        help="recovery: fraction of the full batch's activations the cap allows",
    )
    parser.add_argument("--no-estimate", action="store_true", help="find_batch_size without it")
    parser.add_argument(
        "--only",
        action="append",
        choices=["reference", "overhead", "recovery", "leak", "find_batch_size"],
        help="run only this section (repeatable); recovery needs reference",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=170.0,
        help="skip the remaining optional sections after this many seconds",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.seq_len, args.steps = (
            min(args.batch_size, 8),
            min(args.seq_len, 32),
            4,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    path = args.out / ("guard_smoke.json" if args.smoke else "guard.json")

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - started
        path.write_text(json.dumps(results, indent=2, default=str))

    try:
        setup = Setup(args)
        results["environment"] = environment(setup)
    except Exception:
        results["setup"] = {"error": traceback.format_exc()[-3000:]}
        save()
        print(table(results))
        return 1
    if not setup.cuda and not setup.smoke:
        results["setup"] = {"error": "no CUDA device: run on the GPU machine, or pass --smoke"}
    sections: list[tuple[str, Callable[[], dict[str, Any]], bool]] = [
        ("reference", lambda: reference(setup, shared), True),
        ("overhead", lambda: overhead(setup, shared, args.pairs), True),
        ("recovery", lambda: recovery(setup, shared, args.keep), True),
        ("leak", lambda: leak(setup, shared), False),
        ("find_batch_size", lambda: finder(setup, shared, not args.no_estimate), False),
    ]
    if args.only:
        sections = [s for s in sections if s[0] in args.only]
    with deterministic_fp32():
        for name, section, essential in sections:
            if "setup" in results:
                break
            if not essential and time.perf_counter() - started > args.budget_s:
                results[name] = {"error": f"skipped: {args.budget_s:.0f} s budget spent"}
                continue
            if name == "recovery" and "error" in results.get("reference", {}):
                results[name] = {"error": "skipped: needs the reference run"}
                continue
            t0 = time.perf_counter()
            try:
                results[name] = section()
            except BaseException as exc:  # keep going: one shot on the GPU machine
                results[name] = {"error": traceback.format_exc()[-3000:]}
                if isinstance(exc, KeyboardInterrupt):
                    save()
                    raise
            finally:
                setup.fake_limit = None
                if isinstance(results.get(name), dict):
                    results[name]["section_s"] = time.perf_counter() - t0
                clean()
                save()
    print(f"results: {path}")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
