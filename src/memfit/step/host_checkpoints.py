"""Checkpoints while the host optimizer is attached: saved from the masters, loaded into them.

While ``OffloadOptimizer`` is applied, the weights training updates are the float32 masters in
host memory, and Adam's moments for them live there too; the GPU holds rounded working copies
and ``optimizer.state`` holds nothing for those parameters. The hooks here make PyTorch's own
checkpoint calls see and write the real state (``HostOptimizer``'s half that handles them; see
``memfit.step.host_optimizer``):

- ``model.state_dict()`` (or a submodule's) gives each offloaded weight's float32 master (a
  copy in host memory), not its working copy: the plain run's checkpoint.
- ``model.load_state_dict(...)`` writes each offloaded weight's value into its master as well
  as into the working copy (rounded there as the host step rounds), so the next update starts
  from the loaded weights, not from the masters of before.
- ``optimizer.state_dict()`` holds the offloaded parameters' ``step``, ``exp_avg`` and
  ``exp_avg_sq`` (views of the host's memory, as PyTorch's own state dict refers to the live
  state), laid out as ``torch.optim.Adam``/``AdamW`` keeps them.
- ``optimizer.load_state_dict(...)`` writes them into the host's state (and resets it for a
  parameter the checkpoint has no state for, as PyTorch does), and the host step reads the
  loaded parameter groups' hyper-parameters from then on.

Every hook first waits for the host worker, whose updates would otherwise land after the load.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from memfit.errors import InvalidInputError
from memfit.step.host_updates import HostEntry

__all__ = ["HostCheckpoints"]


class HostCheckpoints:
    """The checkpoint hooks of ``HostOptimizer`` (a base class: ``_entries``, ``optimizer``,
    ``_group_of``, ``_handles`` and ``synchronize`` are ``HostOptimizer``'s)."""

    optimizer: torch.optim.Optimizer
    _entries: dict[nn.Parameter, HostEntry]
    _group_of: dict[nn.Parameter, dict[str, Any]]
    _handles: list[Any]

    def synchronize(self) -> None:  # pragma: no cover - HostUpdates implements it
        raise NotImplementedError

    def _install_checkpoint_hooks(self, model: nn.Module) -> None:
        """Hooks on each module that owns an offloaded weight, and on the optimizer."""
        for module in model.modules():
            owned = [
                (local, self._entries[p])
                for local, p in module._parameters.items()
                if p is not None and p in self._entries
            ]
            if not owned:
                continue
            self._handles.append(
                module.register_state_dict_post_hook(functools.partial(_save_masters, owned))
            )
            self._handles.append(
                module.register_load_state_dict_pre_hook(
                    functools.partial(_load_masters, self, owned)
                )
            )
        optimizer = self.optimizer
        self._handles += [
            optimizer.register_state_dict_post_hook(lambda o, sd: self._save_state(sd)),
            optimizer.register_load_state_dict_pre_hook(lambda o, sd: self._load_state(sd)),
            optimizer.register_load_state_dict_post_hook(lambda o: self._relink_groups()),
        ]

    # --- the optimizer -------------------------------------------------------------------
    def _save_state(self, state_dict: dict[str, Any]) -> None:
        """Add the offloaded parameters' state, at the indices ``state_dict()`` gave them."""
        self.synchronize()
        index = _indices(g["params"] for g in self.optimizer.param_groups)
        for param, entry in self._entries.items():
            host = entry.host
            steps = float(host.step)
            if steps == 0:
                continue  # never stepped: torch.optim has no state for it either
            group = self._group_of[param]
            on_device = group.get("fused") or group.get("capturable")
            state_dict["state"][index[param]] = {
                "step": torch.tensor(
                    steps, dtype=torch.float32, device=param.device if on_device else "cpu"
                ),
                "exp_avg": host.exp_avg.view(entry.shape),
                "exp_avg_sq": host.exp_avg_sq.view(entry.shape),
            }

    def _load_state(self, state_dict: dict[str, Any]) -> dict[str, Any] | None:
        """Write the offloaded parameters' state into the host; the rest of ``state_dict``
        goes on to ``torch.optim``'s own load (which would cast these moments to the working
        copies' dtype). A state dict whose groups do not match is left to it to refuse."""
        saved_groups = state_dict.get("param_groups")
        groups = self.optimizer.param_groups
        if not isinstance(saved_groups, list) or [len(g["params"]) for g in groups] != [
            len(g.get("params", ())) for g in saved_groups
        ]:
            return None
        self.synchronize()
        by_saved_id = dict(
            zip(
                (i for g in saved_groups for i in g["params"]),
                (p for g in groups for p in g["params"]),
                strict=True,
            )
        )
        state = state_dict.get("state", {})
        ours = {i: p for i, p in by_saved_id.items() if p in self._entries}
        loaded = {p: state.get(i) for i, p in ours.items()}
        for param, values in loaded.items():
            _check_loaded(self._entries[param], values)
        for param, values in loaded.items():
            _write_state(self._entries[param], values)
        return {**state_dict, "state": {i: v for i, v in state.items() if i not in ours}}

    def _relink_groups(self) -> None:
        """``load_state_dict`` made new parameter-group dicts: the host step reads those."""
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                entry = self._entries.get(param)
                if entry is not None:
                    entry.group = group
                    self._group_of[param] = group


# --- the model ---------------------------------------------------------------------------
def _save_masters(
    owned: list[tuple[str, HostEntry]],
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
) -> None:
    for local, entry in owned:
        key = prefix + local
        if key in state_dict:
            # a copy: views of one flat buffer share a storage, which savers such as
            # safetensors take for tied weights (4 bytes per weight of host memory meanwhile)
            state_dict[key] = entry.host.master.view(entry.shape).clone()


def _load_masters(
    engine: HostCheckpoints,
    owned: list[tuple[str, HostEntry]],
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    *args: Any,
) -> None:
    if local_metadata.get("assign_to_params_buffers"):
        raise InvalidInputError(
            f"load_state_dict(assign=True) would replace the parameters of {prefix or 'the model'}"
            f" that OffloadOptimizer updates on the host; load with assign=False (the default), "
            f"or undo the plan first (memfit.undo(model)) and apply it again after loading"
        )
    engine.synchronize()
    for local, entry in owned:
        value = state_dict.get(prefix + local)
        # what torch's own load copies (it reports the rest): the same shape
        if isinstance(value, torch.Tensor) and value.shape == entry.shape:
            entry.host.master.copy_(value.detach().reshape(-1))


# --- helpers -----------------------------------------------------------------------------
def _indices(groups: Iterable[list[nn.Parameter]]) -> dict[nn.Parameter, int]:
    """Each parameter's index in ``optimizer.state_dict()`` (``Optimizer.state_dict``'s
    numbering: by group, the first occurrence of a parameter keeping its number)."""
    index: dict[nn.Parameter, int] = {}
    start = 0
    for params in groups:
        for i, param in enumerate(params, start):
            index.setdefault(param, i)
        start += len(params)
    return index


def _tensors(values: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    for key in ("exp_avg", "exp_avg_sq"):
        value = values.get(key)
        if value is not None:
            yield key, value


def _check_loaded(entry: HostEntry, values: Any) -> None:
    """Raise before anything is written if the checkpoint's state cannot be this parameter's."""
    if values is None:
        return
    numel = entry.host.master.numel()
    for key, value in _tensors(values):
        if not isinstance(value, torch.Tensor) or value.numel() != numel:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InvalidInputError(
                f"optimizer.load_state_dict: the checkpoint's {key!r} for {entry.name} is "
                f"{shape}, not {tuple(entry.shape)}; load the optimizer state saved for this "
                f"model"
            )


@torch.no_grad()
def _write_state(entry: HostEntry, values: Any) -> None:
    host = entry.host
    if values is None:  # no state in the checkpoint: a fresh optimizer's
        host.exp_avg.zero_()
        host.exp_avg_sq.zero_()
        host.step.zero_()
        return
    moments = dict(_tensors(values))
    for key, target in (("exp_avg", host.exp_avg), ("exp_avg_sq", host.exp_avg_sq)):
        value = moments.get(key)
        if value is None:
            target.zero_()
        else:
            target.copy_(value.detach().reshape(-1))
    host.step.fill_(float(values.get("step", 0)))
