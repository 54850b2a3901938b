"""Everything a run of real steps can change on the user's objects, kept, then put back exactly.

memfit runs real training steps on the user's own model where only the model itself will do
(``memfit.measure`` measures the memory of that very module; ``find_batch_size`` tries batch
sizes with the user's model and optimizer). Those runs change what they touch: the optimizer
steps the weights, a pure-bf16 step casts them, the GPU run moves them, BatchNorm updates its
statistics, dropout draws random numbers. ``KeptState`` records it all first and ``restore``
puts it back, whatever ended the run (an error, an out-of-memory error, KeyboardInterrupt):

- every module's parameter and buffer slots hold the same objects as before, with their
  values, dtypes, devices, strides and ``requires_grad``; parameters keep their identity, so an
  optimizer or hooks that hold them stay valid;
- gradients (values, dtypes, devices; None where there was none);
- each module's train/eval mode;
- the optimizer's per-parameter state (same tensor objects, values put back) and each group's
  hyper-parameters (a scheduler's ``lr``);
- a grad scaler's state;
- the CPU's and the CUDA devices' random-number generators.

Copies live in host memory. A tensor the run only ever reads from elsewhere (on another device
than ``moved_to``: ``model.to(device)`` copies it there and the run trains the copy) is kept by
reference instead, at no cost. A buffer already on ``moved_to`` is not held by ``KeptState``
(its memory would count in what the run measures): where the run replaces it (``model.to(dtype)``
replaces buffers, as PyTorch always does), a new tensor with its values, dtype and device takes
its slot.
"""

from __future__ import annotations

import copy
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memfit.errors import MemfitError

__all__ = ["KeptState"]


@dataclass
class _KeptTensor:
    """One tensor object and what it held."""

    ref: Callable[[], torch.Tensor | None]  # the object (a Parameter, a buffer, a state tensor)
    saved: torch.Tensor  # a host copy, or the original data itself (``shared``)
    shared: bool  # the run never writes the original storage: kept by reference
    device: torch.device
    requires_grad: bool
    grad: _KeptTensor | None = None

    def tensor(self) -> torch.Tensor:
        """The object, or a new one holding the saved values where the object is gone."""
        tensor = self.ref()
        if tensor is None:
            tensor = self.saved if self.shared else self.saved.to(self.device)
            tensor.requires_grad_(self.requires_grad)
            self.ref = lambda: tensor
        return tensor


def _keep(tensor: torch.Tensor, moved_to: torch.device | None) -> _KeptTensor:
    data = tensor.detach()
    shared = moved_to is not None and data.device != moved_to
    # shared: model.to(moved_to) copies it away, and the run trains the copy
    saved = data if shared else data.to("cpu", copy=True)
    grad = tensor.grad if isinstance(tensor, nn.Parameter) else None
    if isinstance(tensor, nn.Parameter) or moved_to is None or shared:
        ref: Callable[[], torch.Tensor | None] = lambda: tensor
    else:
        # a buffer on the run's device, which model.to(dtype) replaces: held, its old storage
        # would count in what the run measures; if it goes, a new buffer gets its values
        ref = weakref.ref(tensor)
    return _KeptTensor(
        ref,
        saved,
        shared,
        tensor.device,
        tensor.requires_grad,
        _keep(grad, moved_to) if grad is not None else None,
    )


@torch.no_grad()
def _put_back(kept: _KeptTensor) -> None:
    """The object holds its saved values, dtype, device and strides again."""
    tensor, saved = kept.tensor(), kept.saved
    if tensor is saved:
        return
    if kept.shared:
        tensor.data = saved  # the original storage
    elif (
        tensor.device == kept.device
        and tensor.dtype == saved.dtype
        and tensor.shape == saved.shape
        and tensor.stride() == saved.stride()
    ):
        tensor.copy_(saved)  # in place: views of its storage stay valid
    else:
        tensor.data = saved.to(kept.device)
    if tensor.is_leaf and tensor.requires_grad != kept.requires_grad:
        tensor.requires_grad_(kept.requires_grad)


def _restore_grad(kept: _KeptTensor) -> None:
    assert kept.grad is not None
    kept.tensor().grad = kept.grad.saved.to(kept.grad.device)


class KeptState:
    """What a run can change on ``module``, ``optimizer`` and ``grad_scaler``, taken now.

    Args:
        module: the user's module, or None (only the random-number generators are kept).
        optimizer: the optimizer the run steps, or None.
        grad_scaler: a ``torch.amp.GradScaler`` the run uses, or None.
        moved_to: the device the run moves the module to before it writes anything
            (``memfit.measure``: the GPU); tensors elsewhere are kept by reference. None: the
            run may write every tensor where it is (each is copied to host memory).

    ``restore()`` is called once, after the run.

    Known limitations:
        Tensors held in plain attributes (not registered as parameters or buffers), modules
        the run adds or removes, and hooks it leaves behind are not tracked.
    """

    def __init__(
        self,
        module: nn.Module | None,
        optimizer: torch.optim.Optimizer | None = None,
        grad_scaler: Any | None = None,
        *,
        moved_to: torch.device | None = None,
    ) -> None:
        self._tensors: dict[int, _KeptTensor] = {}
        self._slots: list[tuple[dict[str, Any], list[tuple[str, int | None]]]] = []
        self._modes: list[tuple[nn.Module, bool]] = []
        for owner in module.modules() if module is not None else ():
            self._modes.append((owner, owner.training))
            for table in (owner._parameters, owner._buffers):
                slots = [(name, None if t is None else id(t)) for name, t in table.items()]
                self._slots.append((table, slots))
                for tensor in table.values():
                    if tensor is not None and id(tensor) not in self._tensors:
                        self._tensors[id(tensor)] = _keep(tensor, moved_to)
        self._optimizer = _OptimizerState(optimizer) if optimizer is not None else None
        self._scaler = grad_scaler
        self._scaler_state = (
            copy.deepcopy(grad_scaler.state_dict()) if grad_scaler is not None else None
        )
        self._rng = _RngState()

    def restore(self) -> None:
        """Put everything back as it was when this was taken.

        Raises:
            MemfitError: when a part could not be put back (the others still are), naming it.
        """
        failures: list[tuple[str, Exception]] = []

        def attempt(what: str, action: Callable[[], None]) -> None:
            try:
                action()
            except Exception as error:  # put back the rest, then report every failure
                failures.append((what, error))

        objects = {key: kept.tensor() for key, kept in self._tensors.items()}  # held here
        for tensor in objects.values():  # gradients first: that frees their memory
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None
        for table, slots in self._slots:
            table.clear()
            for name, key in slots:
                table[name] = None if key is None else objects[key]
        for kept in self._tensors.values():
            attempt("a parameter or buffer", functools.partial(_put_back, kept))
        for kept in self._tensors.values():
            if kept.grad is not None:
                attempt("a gradient", functools.partial(_restore_grad, kept))
        for owner, training in self._modes:
            owner.training = training
        if self._optimizer is not None:
            attempt("the optimizer's state", self._optimizer.restore)
        scaler, scaler_state = self._scaler, self._scaler_state
        if scaler is not None and scaler_state is not None:
            attempt("the grad scaler", lambda: scaler.load_state_dict(scaler_state))
        attempt("the random-number generators", self._rng.restore)
        if failures:
            details = "; ".join(f"{what}: {type(e).__name__}: {e}" for what, e in failures)
            raise MemfitError(
                f"memfit could not put the model back as it was after its run ({details}); "
                f"reload the model's and optimizer's state from your checkpoint"
            ) from failures[0][1]


class _OptimizerState:
    """An optimizer's per-parameter state and its groups' hyper-parameters."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.state_table = optimizer.state
        self.groups_list = optimizer.param_groups
        self.groups = [
            (
                group,
                group["params"],
                list(group["params"]),
                copy.deepcopy({k: v for k, v in group.items() if k != "params"}),
            )
            for group in optimizer.param_groups
        ]
        self.state = {
            param: {
                key: _keep(value, None) if isinstance(value, torch.Tensor) else copy.deepcopy(value)
                for key, value in entries.items()
            }
            for param, entries in optimizer.state.items()
        }

    def restore(self) -> None:
        optimizer = self.optimizer
        optimizer.state = self.state_table  # load_state_dict replaces both
        optimizer.param_groups = self.groups_list
        self.groups_list[:] = [group for group, _, _, _ in self.groups]
        for group, params_list, params, hyper in self.groups:
            group.clear()
            group.update(hyper)
            params_list[:] = params
            group["params"] = params_list
        self.state_table.clear()
        for param, entries in self.state.items():
            restored = {}
            for key, value in entries.items():
                if isinstance(value, _KeptTensor):
                    _put_back(value)
                    value = value.tensor()
                restored[key] = value
            self.state_table[param] = restored


class _RngState:
    """The CPU's and CUDA's default random-number generators."""

    def __init__(self) -> None:
        self.cpu = torch.random.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        elif torch.cuda.is_initialized():
            # CUDA started during the run: its generators as they were when it started
            for generator in torch.cuda.default_generators:
                generator.manual_seed(generator.initial_seed())
