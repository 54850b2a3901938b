"""Run a plain ``step_fn(batch)`` on micro-batches, with the update of the whole batch.

``step_fn`` does forward, ``backward`` and then whatever should happen once per step (unscale,
clipping, ``optimizer.step()``, ``zero_grad()``, the LR scheduler, logging). When the guard splits
a batch into micro-batches ``b_1 .. b_k`` of ``n_1 .. n_k`` samples, it calls ``step_fn`` on each:

- every gradient reaching a parameter during micro-batch ``i`` is multiplied by ``w_i``
  (``n_i / N`` for a mean loss, through a tensor hook on the parameter, before it is added to
  ``.grad``), so ``.grad`` ends up holding ``sum_i w_i * grad(loss_i)``. For a loss that is a
  mean over samples this equals the gradient of the full batch;
- on micro-batches ``1 .. k-1`` the call is stopped right after its backward (an exception the
  guard raises from an autograd end-of-backward callback and catches itself; it derives from
  ``BaseException``, so ``except Exception`` in ``step_fn`` does not swallow it). Only the last
  micro-batch runs what follows backward, and by then ``.grad`` holds the whole batch's gradient:
  clipping, unscaling and the step see exactly what they would have seen unsplit;
- ``optimizer.zero_grad`` and ``model.zero_grad`` do nothing once a micro-batch's backward has run
  and until the real optimizer step has (instance attributes, restored after the call).

Known limitations:
    Code in ``step_fn`` before backward runs once per micro-batch (keep side effects such as
    step counters after backward). ``step_fn`` must run backward once per call; a second backward
    is detected on the last micro-batch and raises MemfitError before the update. Gradients
    cleared by hand (``p.grad = None``) between micro-batches are detected and raise. The
    returned value is what ``step_fn`` returned on the last micro-batch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from memfit.errors import MemfitError

__all__ = ["FunctionRunner", "observe_zero_grad"]

_queue_callback = torch.autograd.Variable._execution_engine.queue_callback
_graph_task_id: Callable[[], int] = getattr(torch._C, "_current_graph_task_id", lambda: 0)
_FUNCTION_FILE = os.path.join("torch", "autograd", "function.py")


def _inside_reentrant_backward() -> bool:
    """True when the running backward was started from a custom Function's backward.

    Note: [reentrant backward] Reentrant checkpointing runs a nested backward from inside
    ``CheckpointFunction.backward``; callbacks queued from hooks in that nested backward fire when
    it ends, while the outer backward still runs. Its Python frames (``BackwardCFunction.apply``)
    are on the stack then, on the CPU thread or on a device's autograd thread alike.
    """
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "apply" and frame.f_code.co_filename.endswith(_FUNCTION_FILE):
            return True
        frame = frame.f_back
    return False


class _MicroBatchDone(BaseException):
    """Ends a micro-batch other than the last right after its backward (caught by the guard)."""


@contextlib.contextmanager
def _patched(obj: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    had = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, replacement)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)


def observe_zero_grad(
    owner: Any, after: Callable[[], None]
) -> contextlib.AbstractContextManager[None]:
    """Within the block, call ``after()`` after each ``owner.zero_grad(...)``."""
    real = owner.zero_grad

    def zero_grad(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        after()
        return result

    return _patched(owner, "zero_grad", zero_grad)


class FunctionRunner:
    """One attempt of a guarded step on a plain function.

    Args:
        fn: ``step_fn(batch)``.
        optimizer: the optimizer ``fn`` steps.
        model: the model ``fn`` trains (its ``zero_grad`` is intercepted too; DDP gets
            ``no_sync``), or None.
        params: parameters whose gradients are scaled.
        after_backward: called at the end of the last micro-batch's backward, before anything
            that follows it (the distributed vote and gradient reduction), or None.
        on_zero_grad: called after a real ``zero_grad`` (the snapshot marks gradients clear).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        optimizer: torch.optim.Optimizer,
        model: nn.Module | None,
        params: list[nn.Parameter],
        after_backward: Callable[[], None] | None,
        on_zero_grad: Callable[[], None],
    ) -> None:
        self.fn = fn
        self.optimizer = optimizer
        self.model = model
        self.params = [p for p in params if p.requires_grad]
        self.after_backward = after_backward
        self.on_zero_grad = on_zero_grad
        self.stepped = False
        self.phase = "forward/backward"
        self._accumulating = False
        self._expected: dict[int, tuple[torch.Tensor | None, int]] = {}
        self._reset(0, 1, 1.0)

    def _reset(self, index: int, count: int, weight: float) -> None:
        self._index, self._count, self._weight = index, count, weight
        self._queued: set[int] = set()  # graph tasks with an end-of-backward callback queued
        self._backwards = 0

    @property
    def _last(self) -> bool:
        return self._index == self._count - 1

    # ---- autograd side ------------------------------------------------------------------

    def _grad_hook(self, param: nn.Parameter) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            task = _graph_task_id()
            if task not in self._queued:
                self._queued.add(task)
                _queue_callback(lambda: self._backward_done(task))
            if self._index > 0 and self._backwards == 0:
                expected = self._expected.get(id(param))
                if expected is not None and (
                    param.grad is not expected[0]
                    or (param.grad is not None and param.grad._version != expected[1])
                ):
                    raise MemfitError(
                        f"step_fn cleared or replaced the gradient of a parameter of shape "
                        f"{tuple(param.shape)} between micro-batches (not through "
                        f"optimizer.zero_grad or model.zero_grad, which the guard intercepts); "
                        f"clear gradients with zero_grad(), or implement the MicroBatchStep "
                        f"protocol (forward_backward / optimizer_step)"
                    )
            return grad if self._weight == 1.0 else grad * self._weight

        return hook

    def _backward_done(self, task: int) -> None:
        self._queued.discard(task)
        if _inside_reentrant_backward():
            return  # a nested backward (reentrant checkpoint) ended; the outer one goes on
        self._backwards += 1
        if self._backwards > 1:
            raise MemfitError(
                "step_fn ran backward more than once in one call; the guard splits a step "
                "only when it runs one backward (it stops non-final micro-batches right after "
                "it). Combine the losses into one backward, or implement the MicroBatchStep "
                "protocol (forward_backward / optimizer_step)"
            )
        self._expected = {
            id(p): (p.grad, p.grad._version if p.grad is not None else 0) for p in self.params
        }
        if not self._last:
            raise _MicroBatchDone
        if self.after_backward is not None:
            self.after_backward()

    # ---- optimizer side -----------------------------------------------------------------

    def _pre_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not self._last:
            raise MemfitError(
                f"optimizer.step() ran on micro-batch {self._index + 1} of {self._count} "
                f"before any backward ended; the guard needs step_fn to run backward before the "
                f"optimizer step (and not to catch BaseException around backward)"
            )
        self.phase = "optimizer step"

    def _post_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.stepped = True
        self.phase = "after optimizer step"

    def _zero_grad(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def zero_grad(*args: Any, **kwargs: Any) -> Any:
            if self._accumulating and not self.stepped:
                return None
            result = real(*args, **kwargs)
            self.on_zero_grad()
            return result

        return zero_grad

    # ---- one attempt --------------------------------------------------------------------

    def run(self, parts: list[Any], weights: list[float]) -> Any:
        """Run ``fn`` on each micro-batch; return what it returned on the last one."""
        self.stepped = False
        self.phase = "forward/backward"
        self._accumulating = False
        self._expected = {}
        hooked = len(parts) > 1 or self.after_backward is not None
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        handles = [
            self.optimizer.register_step_pre_hook(self._pre_step),
            self.optimizer.register_step_post_hook(self._post_step),
        ]
        if hooked:
            handles += [p.register_hook(self._grad_hook(p)) for p in self.params]
        result: Any = None
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(
                    _patched(self.optimizer, "zero_grad", self._zero_grad(self.optimizer.zero_grad))
                )
                if self.model is not None:
                    stack.enter_context(
                        _patched(self.model, "zero_grad", self._zero_grad(self.model.zero_grad))
                    )
                if ddp and hooked:
                    stack.enter_context(self.model.no_sync())  # type: ignore[union-attr, operator]
                for i, (part, weight) in enumerate(zip(parts, weights, strict=True)):
                    self._reset(i, len(parts), weight)
                    try:
                        result = self.fn(part)
                    except _MicroBatchDone:
                        self._accumulating = True
                        continue
                    if hooked and self._backwards == 0:
                        raise MemfitError(
                            f"step_fn returned on micro-batch {i + 1} of {len(parts)} without "
                            f"running backward; the guard can split only a step that runs one "
                            f"backward per call"
                        )
            return result
        finally:
            for handle in handles:
                handle.remove()
            self._expected = {}
