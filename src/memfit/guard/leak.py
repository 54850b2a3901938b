"""``LeakWatch``: notice memory growing step over step, and name the tensors behind it."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from memfit.errors import InvalidInputError
from memfit.guard.census import (
    CreationTracker,
    graph_roots,
    graph_stats,
    graph_tensors,
    python_referrers,
    retained_bytes,
    where_held,
)
from memfit.units import MiB, format_bytes

__all__ = ["LeakWatch", "LeakReport", "Culprit"]

log = logging.getLogger("memfit.guard")


@dataclass(frozen=True)
class Culprit:
    """A tensor alive at a step boundary while attached to an autograd graph.

    Attributes:
        shape: its shape.
        dtype: e.g. "torch.float32".
        device: e.g. "cuda:0".
        grad_fn: the node that made it, e.g. "AddBackward0".
        graph_nodes: autograd nodes its graph holds (at most 20 000 counted).
        saved_bytes: bytes of tensors that graph keeps for backward (activations).
        held_by: the variables, containers and attributes that reference it.
        created_at: ``file:line in function: code`` of the line that made or last changed it,
            when creation was tracked (None otherwise).
    """

    shape: tuple[int, ...]
    dtype: str
    device: str
    grad_fn: str
    graph_nodes: int
    saved_bytes: int
    held_by: tuple[str, ...]
    created_at: str | None

    def describe(self) -> str:
        """One line: ``float32[] (AddBackward0) holding 12 graph nodes, 1.2 MiB, ...``."""
        dtype = self.dtype.removeprefix("torch.")
        shape = ",".join(str(d) for d in self.shape)
        text = (
            f"{dtype}[{shape}] on {self.device} ({self.grad_fn}) holding a graph of "
            f"{self.graph_nodes} nodes and {format_bytes(self.saved_bytes)} of saved tensors"
        )
        if self.held_by:
            text += "; held by " + ", ".join(self.held_by)
        if self.created_at:
            text += f"; made at {self.created_at}"
        return text + "; keep a number instead (loss.item(), or loss.detach())"


@dataclass(frozen=True)
class LeakReport:
    """Memory grew over ``len(samples) - 1`` consecutive steps; these tensors are why.

    Attributes:
        step: the step (0-based) at which the report was made.
        samples_bytes: memory at the end of each step of the growing window.
        growth_bytes: growth over the window.
        culprits: graph-attached tensors alive at the step boundary, largest graphs first.
    """

    step: int
    samples_bytes: tuple[int, ...]
    growth_bytes: int
    culprits: tuple[Culprit, ...]

    def describe(self) -> str:
        steps = len(self.samples_bytes) - 1
        head = (
            f"memory grew in each of the last {steps} steps, by {format_bytes(self.growth_bytes)} "
            f"in total (step {self.step})"
        )
        if not self.culprits:
            return head + "; no tensor attached to an autograd graph is alive between steps"
        return head + ":\n" + "\n".join(f"  - {c.describe()}" for c in self.culprits)


def _default_memory(device: torch.device | None) -> Callable[[], int]:
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.memory_allocated(device)
    return retained_bytes


def _growing(samples: list[int], patience: int, least: int) -> tuple[int, ...] | None:
    """The last ``patience + 1`` samples if each is larger than the one before, by ``least``
    in total; else None."""
    if len(samples) <= patience:
        return None
    recent = samples[-(patience + 1) :]
    if (
        all(b > a for a, b in zip(recent, recent[1:], strict=False))
        and recent[-1] - recent[0] >= least
    ):
        return tuple(recent)
    return None


class LeakWatch:
    """Watch memory at step boundaries; when it keeps growing, name the culprits.

    Use it around each training step (``with watch.step(): ...``) or call ``watch.sample()`` at
    the end of each step. After ``warmup`` steps, when memory grew in each of ``patience``
    consecutive steps by at least ``min_growth_bytes`` in total, the watch tracks where tensors
    are created during one more step (context-manager form only) and then reports every tensor
    alive at the boundary that is still attached to an autograd graph: shape, dtype, the graph it
    holds, the variables holding it and the line that made it. Reports are logged (logger
    ``memfit.guard``, one warning) and kept in ``watch.reports``.

    A loss summed without ``.item()`` *after* its backward keeps the graph's nodes but not its
    saved activations (backward freed them): device memory stays flat while host memory creeps
    up. ``graph_check_every=N`` also counts the graph nodes alive at every N-th boundary (a walk
    of the ``gc`` heap) and reports when that count keeps growing.

    Args:
        warmup: steps ignored at the start (allocator caches, optimizer state, lazy inits).
        patience: consecutive growing steps (or graph checks) that make a leak.
        min_growth_bytes: least growth over those steps that counts (1 MiB by default).
        device: the device to watch; default the current CUDA device, else host tensors.
        memory_fn: ``() -> bytes`` replacing the default reading (``memory_allocated`` on CUDA;
            on the host, live tensors plus what graphs keep saved, found through ``gc``).
        track_creation: spend one step recording creation sites before reporting.
        graph_check_every: count live graph nodes every this many steps; 0 never.

    Known limitations:
        Only Python-visible tensors are found (``gc``): memory held by C++ extensions, caches of
        libraries or reference cycles not yet collected shows as growth without culprits. The
        host reading and the graph check walk the ``gc`` heap (slow in large programs). Creation
        tracking sees calls made through Python (``TorchFunctionMode``).
    """

    def __init__(
        self,
        *,
        warmup: int = 5,
        patience: int = 3,
        min_growth_bytes: int = MiB,
        device: torch.device | str | None = None,
        memory_fn: Callable[[], int] | None = None,
        track_creation: bool = True,
        graph_check_every: int = 0,
    ) -> None:
        for name, value, low in (
            ("warmup", warmup, 0),
            ("patience", patience, 1),
            ("graph_check_every", graph_check_every, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidInputError(f"{name}={value!r} must be an integer >= {low}")
        if device is None and torch.cuda.is_available() and torch.cuda.is_initialized():
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = torch.device(device) if device is not None else None
        self.warmup, self.patience, self.min_growth_bytes = warmup, patience, min_growth_bytes
        self.track_creation = track_creation
        self.graph_check_every = graph_check_every
        self._memory = memory_fn or _default_memory(self.device)
        self.samples: list[int] = []
        self.graph_nodes: list[int] = []
        self.reports: list[LeakReport] = []
        self._armed = False
        self._tracker: CreationTracker | None = None
        self._since = warmup  # where the current growth window starts

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Wrap one training step; at its end, sample memory (and maybe report)."""
        tracker = CreationTracker() if self._armed else None
        with tracker if tracker is not None else contextlib.nullcontext():
            yield
        self._tracker = tracker
        self._armed = False
        self._end_of_step(sys._getframe(2), can_arm=True)

    def sample(self) -> LeakReport | None:
        """Call at the end of each step (instead of ``step()``); the report, if one is made."""
        return self._end_of_step(sys._getframe(1), can_arm=False)

    def _end_of_step(self, frame: object, *, can_arm: bool) -> LeakReport | None:
        step = len(self.samples)
        self.samples.append(int(self._memory()))
        if step < self.warmup:
            return None
        every = self.graph_check_every
        if every and (step - self.warmup) % every == 0:
            self.graph_nodes.append(sum(graph_stats(t, saved=False)[0] for t in graph_tensors()))
        grew = _growing(self.samples[self._since :], self.patience, self.min_growth_bytes)
        nodes = _growing(self.graph_nodes, self.patience, 1) if every else None
        if grew is None and nodes is None:
            return None
        if can_arm and self.track_creation and self._tracker is None:
            self._armed = True
            log.info(
                "memfit.guard: memory grew for %d steps; tracking tensor creation", self.patience
            )
            return None
        window = grew if grew is not None else tuple(self.samples[-(self.patience + 1) :])
        report = LeakReport(
            step=step,
            samples_bytes=window,
            growth_bytes=window[-1] - window[0],
            culprits=self._culprits(frame),
        )
        self.reports.append(report)
        self._since = len(self.samples)  # a fresh window before the next report
        self.graph_nodes = []
        self._tracker = None
        log.warning("memfit.guard: %s", report.describe())
        return report

    def _culprits(self, frame: object) -> tuple[Culprit, ...]:
        found = []
        tensors = graph_tensors()
        roots = graph_roots(tensors)
        for tensor in roots:
            held_by = where_held(tensor, frame)  # type: ignore[arg-type]
            if not held_by and not python_referrers(tensor, [tensors, roots]):
                continue  # alive only from C++: part of some graph
            nodes, saved = graph_stats(tensor)
            site = self._tracker.site_of(tensor) if self._tracker is not None else None
            found.append(
                Culprit(
                    shape=tuple(tensor.shape),
                    dtype=str(tensor.dtype),
                    device=str(tensor.device),
                    grad_fn=type(tensor.grad_fn).__name__,
                    graph_nodes=nodes,
                    saved_bytes=saved,
                    held_by=tuple(held_by),
                    created_at=site,
                )
            )
        found.sort(key=lambda c: (c.saved_bytes, c.graph_nodes), reverse=True)
        return tuple(found[:10])
