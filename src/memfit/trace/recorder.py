"""Records every storage a training step allocates and frees, with its module and category.

A ``TorchDispatchMode`` sees each ATen operator's outputs; a storage not seen before is an
allocation, and a weak reference on it reports the free when PyTorch releases it (the same
moment the CUDA caching allocator would get the block back). It works on fake tensors (no memory
is used) and on real CUDA tensors alike, so prediction and measurement share one bookkeeping.
Module attribution comes from ``memfit.trace.modules`` (PyTorch's ModuleTracker).

Tensor subclasses that hold a local tensor (a ``DTensor``'s shard on this rank) are recorded by
that local tensor: its storage, its stream. Each allocation carries the stream that was current
when it was made (``stream_of``): the caching allocator keeps a pool per stream.

Known limitations:
    * Storages resized in place (``untyped_storage().resize_()``) keep their first size, unless
      the resizing code reports it through ``resized`` (FSDP2's parameter storage does, through
      ``memfit.trace.sharding``).
    * Memory allocated outside ATen operators (custom CUDA extensions calling cudaMalloc,
      NCCL buffers) is invisible, as it is to PyTorch's own allocator statistics.
"""

from __future__ import annotations

import collections
import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch._subclasses import fake_tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.module_tracker import ModuleTracker

from memfit.profile import Category, Phase
from memfit.trace.events import Allocation, Trace, local_tensor, local_tensor_or_value
from memfit.trace.fallbacks import FALLBACK_ERRORS, Assumptions, fallback, stricter_than_cuda
from memfit.trace.grad_sums import sum_in_place
from memfit.trace.shadow_values import ShadowValues
from memfit.trace.watchdog import TraceStalled

__all__ = ["MemoryRecorder", "WorkspaceRule", "ValueReadWhileBuilding"]

# A rule sees each call of its operator after it ran and records the memory the kernel uses
# beyond its outputs (a cuBLAS/cuDNN workspace, a flash-attention accumulator) through
# recorder.hidden() or recorder.persistent(): rule(recorder, func, args, kwargs, out).
WorkspaceRule = Callable[["MemoryRecorder", Any, tuple, dict, Any], None]

_ADD_IN_PLACE = torch.ops.aten.add_.Tensor

# ``tensor.device`` of a tensor subclass dispatches this query through every mode: about two
# thirds of the calls a trace sees (the autograd engine asks it for each gradient)
_DEVICE_QUERY = torch.ops.prim.device.default
# how FakeTensorMode answers it (from the fake tensor itself, before any dispatching); asked
# directly when FakeTensorMode is the only mode below the recorder. None: a torch without it.
_FAKE_DEVICE = getattr(fake_tensor, "_DISPATCH_META_HANDLERS", {}).get(_DEVICE_QUERY)

_CATEGORY_OF_PHASE = {
    Phase.SETUP: Category.OTHER,
    Phase.FORWARD: Category.ACTIVATION,
    Phase.BACKWARD: Category.TEMPORARY,
    Phase.OPTIMIZER: Category.TEMPORARY,
}


class ValueReadWhileBuilding(BaseException):  # noqa: N818 - a signal to the builder, caught
    """Raised when a model's builder reads a tensor value with ``values_assumed`` False.

    A ``BaseException``, so that the builder's own ``except Exception`` clauses let it through.
    """


class MemoryRecorder(TorchDispatchMode):
    """Records allocations and frees of tensor storages while active.

    Args:
        workspace_rules: hidden scratch memory per operator (see ``WorkspaceRule``).
        on_op: an optional callback ``on_op(func, args, kwargs, out)`` after each operator
            (the measurement side uses it to read the real allocator's counters).
        device_type: count only storages on this device type ("cuda" when measuring; None
            counts all, as on fake CPU tensors that stand for CUDA ones).

    Attributes:
        stream_of: returns the id of the stream current now (0: the default stream); None when
            everything runs on the default stream.
        on_new: called with each new allocation and the tensor that made it (before a DTensor
            is unwrapped to its shard), for tracers that annotate allocations.
        shards_only: ``on_op`` gets DTensor arguments and outputs as their local shards.
    """

    def __init__(
        self,
        workspace_rules: dict[Any, WorkspaceRule] | None = None,
        on_op: Callable[[Any, tuple, dict, Any], None] | None = None,
        device_type: str | None = None,
    ) -> None:
        super().__init__()
        self.device_type = device_type
        self._closed = False
        self._op_start = 0  # len(trace.events) when the operator being recorded started
        self.assumed = Assumptions()  # for operators fake tensors cannot run
        self.trace = Trace()
        self.phase = Phase.SETUP
        self.workspace_rules = workspace_rules or {}
        self.on_op = on_op
        self._live: dict[int, int] = {}  # storage id -> allocation key
        self._refs: dict[int, Any] = {}
        self._next_key = 1
        self._tracker: ModuleTracker | None = None
        self.root_name = ""
        self.recent_ops: collections.deque[str] = collections.deque(maxlen=256)
        # on fake tensors: real values of small tensors computed from constants, for reads
        self.shadows = ShadowValues() if device_type is None else None
        self._stop = False  # set by the watchdog: raise TraceStalled at the next operator
        # False while a builder runs: a value it reads shapes the model (RegNet's widths),
        # so assuming one would build another model; ValueReadWhileBuilding is raised instead
        self.values_assumed = True
        self.stream_of: Callable[[], int] | None = None
        self.on_new: Callable[[Allocation, torch.Tensor], None] | None = None
        self.shards_only = False  # on_op sees DTensors' local shards (what the kernels touch)

    # --- module attribution -------------------------------------------------------------
    def attach(self, tracker: ModuleTracker, root: torch.nn.Module) -> None:
        self._tracker = tracker
        self.root_name = type(root).__name__

    def current_module(self) -> str:
        if self._tracker is None:
            return ""
        parents = [p for p in self._tracker.parents if p != "Global"]
        if not parents:
            return ""
        # the deepest; a tie (a sibling ModuleTracker has not yet left) by name, so that a trace
        # does not depend on the set's hash order
        innermost = max(parents, key=lambda name: (name.count("."), name))
        _, _, fqn = innermost.partition(".")
        return fqn

    def request_stop(self) -> None:
        """Raise ``TraceStalled`` at the next value read (the watchdog's deadline passed)."""
        self._stop = True

    @contextlib.contextmanager
    def reading_no_values(self) -> Iterator[None]:
        """Inside, a read of a tensor value raises ``ValueReadWhileBuilding``."""
        assumed, self.values_assumed = self.values_assumed, False
        try:
            yield
        finally:
            self.values_assumed = assumed

    # --- bookkeeping ----------------------------------------------------------------------
    def _emit(self, key: int) -> None:
        self.trace.events.append(key)
        self.trace.phases.append(self.phase)

    def _new_key(self) -> int:
        key = self._next_key
        self._next_key += 1
        return key

    def track(
        self, tensors: Iterable[torch.Tensor], category: Category, op: str = "", module: str = ""
    ) -> None:
        """Register tensors that already exist (parameters, inputs) as allocations now."""
        for tensor in tensors:
            self._see(tensor, op, category=category, module=module)

    def recategorize(self, tensors: Iterable[torch.Tensor | None], category: Category) -> None:
        """Give the storages of ``tensors`` a new category (e.g. gradients, optimizer state)."""
        for tensor in tensors:
            if tensor is None:
                continue
            key = self._live.get(_storage_id(tensor))
            if key is not None:
                self.trace.allocations[key].category = category

    def forget(self, tensors: Iterable[torch.Tensor]) -> None:
        """Mark storages that live in host memory on the real device (e.g. CPU step counters)."""
        for tensor in tensors:
            key = self._live.get(_storage_id(tensor))
            if key is not None:
                self.trace.allocations[key].host = True

    def hidden(
        self,
        sizes: list[int],
        op: str,
        category: Category = Category.TEMPORARY,
        *,
        before_outputs: list[int] | None = None,
    ) -> None:
        """Scratch buffers allocated together inside one operator, then freed.

        Args:
            before_outputs: buffers allocated before the operator's outputs (copies of inputs
                the kernel makes first); freed last, after those of ``sizes``.
        """
        first = self._scratch(before_outputs or [], op, category, self._op_start)
        keys = self._scratch(sizes, op, category, len(self.trace.events))
        for key in (*keys, *first):
            self._emit(-key)

    def _scratch(self, sizes: list[int], op: str, category: Category, at: int) -> list[int]:
        keys: list[int] = []
        for size in sizes:
            if size <= 0:
                continue
            key = self._new_key()
            self.trace.allocations[key] = Allocation(
                key, size, category, self.phase, self.current_module(), op, stream=self._stream()
            )
            self.trace.events.insert(at + len(keys), key)
            self.trace.phases.insert(at + len(keys), self.phase)
            keys.append(key)
        return keys

    def persistent(self, size: int, op: str, category: Category = Category.OTHER) -> int:
        """A buffer that outlives the step (a library workspace); never freed."""
        key = self._new_key()
        self.trace.allocations[key] = Allocation(
            key, size, category, self.phase, "", op, stream=self._stream()
        )
        self._emit(key)
        return key

    def resized(self, tensor: torch.Tensor, op: str) -> None:
        """``tensor``'s storage was resized in place: free its old size, allocate its new one.

        PyTorch's caching allocator frees the block of a storage resized to zero and allocates
        a new one (on the current stream) when it grows again.
        """
        tensor = local_tensor(tensor)
        sid = _storage_id(tensor)
        key = self._live.get(sid)
        size = tensor.untyped_storage().nbytes()
        if key is not None and self.trace.allocations[key].size == size:
            return
        if key is not None:
            del self._live[sid]
            self._emit(-key)
        if size > 0:
            self._see(tensor, op)

    def _stream(self) -> int:
        return self.stream_of() if self.stream_of is not None else 0

    def _see(
        self,
        tensor: torch.Tensor,
        op: str,
        *,
        category: Category | None = None,
        module: str | None = None,
    ) -> None:
        made_by = tensor
        tensor = local_tensor(tensor)
        if self.device_type is not None and tensor.device.type != self.device_type:
            return
        if tensor.device.type == "meta":  # shapes only, on any machine: no memory
            return
        storage = tensor.untyped_storage()
        sid = storage._cdata
        if sid in self._live:
            return
        size = storage.nbytes()
        key = self._new_key()
        self.trace.allocations[key] = Allocation(
            key=key,
            size=size,
            category=category or _CATEGORY_OF_PHASE[self.phase],
            phase=self.phase,
            module=self.current_module() if module is None else module,
            op=op,
            shape=tuple(tensor.shape),
            dtype=str(tensor.dtype).removeprefix("torch."),
            stream=self._stream(),
        )
        if self.on_new is not None:
            self.on_new(self.trace.allocations[key], made_by)
        self._live[sid] = key
        self._refs[sid] = weakref.ref(storage, self._on_free(sid))
        self._emit(key)

    def close(self) -> None:
        """Stop recording: frees after the step (its objects going away) are not events."""
        self._closed = True

    def _on_free(self, sid: int) -> Callable[[Any], None]:
        def free(_: Any) -> None:
            if self._closed:
                return
            key = self._live.pop(sid, None)
            self._refs.pop(sid, None)
            if key is not None:
                self._emit(-key)

        return free

    @property
    def warnings(self) -> list[str]:
        """The assumptions made for operators fake tensors cannot run, with their bytes."""
        return self.assumed.messages()

    # --- dispatch -------------------------------------------------------------------------
    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is _DEVICE_QUERY:  # a fake tensor's .device, asked by autograd: no operator
            if _FAKE_DEVICE is not None and _fake_mode_alone_below() and _is_fake(args[0]):
                return _FAKE_DEVICE(args)
            return func(*args, **kwargs)
        if self._stop and func is torch.ops.aten._local_scalar_dense.default:
            # at a value read, where loops on values turn; raising inside other operators
            # (autograd's among them) can abort the process
            self._stop = False
            raise TraceStalled()
        if self.shadows is not None and func is torch.ops.aten._local_scalar_dense.default:
            known = self.shadows.scalar(args[0])
            if known is not None:
                return known
        substitute = None
        if self.device_type is None:  # on fake tensors: what the GPU would run
            substitute = stricter_than_cuda(func, args, kwargs)
            summed = sum_in_place(func, args, kwargs)
            if summed is not None:  # the autograd engine's gradient sum, made in place
                func, args, kwargs = _ADD_IN_PLACE, summed, {}
        self._op_start = len(self.trace.events)
        try:
            out = func(*args, **kwargs) if substitute is None else substitute
        except FALLBACK_ERRORS as error:
            if self.device_type is not None:
                raise  # measuring real tensors: nothing to assume
            if not self.values_assumed and func is torch.ops.aten._local_scalar_dense.default:
                raise ValueReadWhileBuilding(str(func)) from error
            out, warning = fallback(func, args, kwargs, error)
            self.assumed.add(warning, out)
        outputs = [out] if isinstance(out, torch.Tensor) else tree_flatten(out)[0]
        if self.shadows is not None:
            self.shadows.follow(func, args, kwargs, outputs)
        name = func.__name__.removesuffix(".default")
        self.recent_ops.append(name)
        for value in outputs:
            if isinstance(value, torch.Tensor):
                self._see(value, name)
        rule = self.workspace_rules.get(func.overloadpacket)
        if rule is not None:
            rule(self, func, args, kwargs, out)
        if self.on_op is not None:
            if self.shards_only:
                self.on_op(func, *tree_map(local_tensor_or_value, (args, kwargs, out)))
            else:
                self.on_op(func, args, kwargs, out)
        return out


def _fake_mode_alone_below() -> bool:
    """Inside a mode's dispatch: whether the one mode left on the stack is a FakeTensorMode."""
    return (
        torch._C._len_torch_dispatch_stack() == 1
        and torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None
    )


def _is_fake(value: Any) -> bool:
    return isinstance(value, fake_tensor.FakeTensor)


def _storage_id(tensor: torch.Tensor) -> int:
    return local_tensor(tensor).untyped_storage()._cdata
