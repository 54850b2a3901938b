"""Which module is running: PyTorch's ModuleTracker, safe under activation checkpointing.

Note: [recomputation and module tracking] ``torch.utils.module_tracker.ModuleTracker`` registers
a multi-gradient hook on the inputs and outputs of every module call, and keeps the handles (and
with them the autograd nodes, and the tensors those nodes saved) until it exits. When
checkpointing recomputes a block inside backward, the recomputed graph is never itself run
backward, so its saved tensors would stay alive for as long as the tracker does: a leak that
does not exist without the tracker, and that would distort both prediction and measurement.
During backward this tracker only updates the module hierarchy and registers no hooks; so it
does with grad mode off (inference), where no backward follows and where a view a module makes
of a parameter requires grad without a gradient function, which the hooks cannot take (CaiT's
class token, expanded under ``no_grad``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.module_tracker import ModuleTracker

from memfit.step.overhead import note as note_overhead

__all__ = ["RecomputeSafeModuleTracker"]


class RecomputeSafeModuleTracker(ModuleTracker):
    """``ModuleTracker`` that keeps no autograd graph alive for modules run inside backward.

    Each module call also notes ``"module_call"`` host overhead for the step-time model
    (``memfit.step.overhead``: the Python a module's call runs besides its operators).
    """

    def _fw_pre_hook(self, mod: Any, input: Any) -> None:
        note_overhead("module_call")
        if self.is_bw or not torch.is_grad_enabled():
            self._get_append_fn(self._get_mod_name(mod), False)()
            return
        super()._fw_pre_hook(mod, input)

    def _fw_post_hook(self, mod: Any, input: Any, output: Any) -> None:
        if self.is_bw or not torch.is_grad_enabled():
            self._get_pop_fn(self._get_mod_name(mod), False)()
            return
        super()._fw_post_hook(mod, input, output)
