"""The FusedGatedMLP applier: a gated MLP keeps its two projections, not four tensors.

``down(act(gate(x)) * up(x))`` written with autograd keeps ``gate(x)`` (for the activation's
backward), both factors of the product, ``act(gate(x))`` and ``up(x)``, and the product itself
(for the down projection's weight gradient): four tensors of the MLP's inner width per layer.
``GatedProduct`` keeps ``gate(x)`` and ``up(x)``; the activation is recomputed in backward and,
under memfit's training step (``lean_saving``), so is the product the down projection keeps,
from the same two tensors. On LLaMA-1B (inner width 5632, batch 4 x 2048 tokens, bf16) that is
176 MiB per layer for two elementwise kernels. Backward runs the operators autograd runs
(``silu_backward``/``gelu_backward`` and two products) on the same values: gradients are
bit-identical.

Each matched module gets an instance ``forward``; undo removes it. Only modules whose class's
forward is exactly that expression qualify (Hugging Face's LLaMA-style MLPs: LLaMA, Mistral,
Qwen2; memfit's zoo ``SwiGLU``), with a SiLU or tanh/exact GELU activation.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from memfit.apply.forward_patch import replace_forward
from memfit.errors import InvalidInputError
from memfit.step.context import ApplyContext
from memfit.step.lean_saving import lean_modules, per_module, recomputable
from memfit.step.registry import register_applier
from memfit.step.undo import UndoFn, run_in_reverse
from memfit.structure.gated_mlp import Activation, gated_activation, gated_mlps, is_gated_mlp
from memfit.structure.matching import match_modules
from memfit.techniques import FusedGatedMLP

__all__ = ["apply_fused_gated_mlp", "GatedProduct"]


class GatedProduct(torch.autograd.Function):
    """``act(gate) * up``, keeping ``gate`` and ``up`` for backward (not ``act(gate)``)."""

    @staticmethod
    def forward(ctx: Any, gate: torch.Tensor, up: torch.Tensor, activation: Activation) -> Any:
        ctx.save_for_backward(gate, up)
        ctx.activation = activation
        ctx.recomputed = _Recomputed()
        product = activation[0](gate) * up
        recomputable(product, ctx.recomputed.product, gate, up, activation[0])
        return product

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        gate, up = ctx.saved_tensors
        act, act_backward = ctx.activation
        activated = ctx.recomputed.take()  # act(gate), if the down projection recomputed it
        # as autograd differentiates act(gate) * up: mul's two products, then act's backward
        grad_gate = act_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        if ctx.needs_input_grad[1]:
            grad_up = grad * (act(gate) if activated is None else activated)
        else:
            grad_up = None
        return grad_gate, grad_up, None


class _Recomputed:
    """``act(gate)`` from recomputing the product for the down projection's backward, which
    runs just before the product's own: kept until then so that it is computed once."""

    def __init__(self) -> None:
        self.activated: torch.Tensor | None = None

    def product(self, gate: torch.Tensor, up: torch.Tensor, act: Any) -> torch.Tensor:
        self.activated = act(gate)
        return self.activated * up

    def take(self) -> torch.Tensor | None:
        activated, self.activated = self.activated, None
        return activated


def _fused_forward(activation: Activation, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    gate, up, down = module.gate_proj, module.up_proj, module.down_proj
    assert callable(gate) and callable(up) and callable(down)  # Linear layers (_qualifies)
    return down(GatedProduct.apply(gate(x), up(x), activation))


@register_applier(FusedGatedMLP)
def apply_fused_gated_mlp(
    model: nn.Module, technique: FusedGatedMLP, context: ApplyContext
) -> UndoFn:
    """Give each matched gated MLP the fused forward; undo restores the class's.

    Known limitations:
        Apply it before techniques that wrap the same module's forward (the planner does);
        modules whose forward was already replaced are refused.

    Raises:
        InvalidInputError: a pattern matches no module, or a matched module's forward is not
            ``down(act(gate(x)) * up(x))`` with plain Linear layers and a SiLU or GELU.
    """
    matched = match_modules(
        model,
        technique.modules,
        what="FusedGatedMLP",
        hint=lambda: ", ".join(gated_mlps(model)[:3]) or "none in this model",
    )
    wrong = [(name, m) for name, m in matched if not is_gated_mlp(m)]
    if wrong:
        name, module = wrong[0]
        raise InvalidInputError(
            f"FusedGatedMLP: {name!r} (a {type(module).__name__}) is not a gated MLP whose "
            f"forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)) with Linear layers and "
            f"a SiLU or GELU, or its forward was already replaced; name only such modules, "
            f"e.g. {', '.join(gated_mlps(model)[:3]) or 'none in this model'}"
        )
    undos = [_install(name, m) for name, m in matched]
    if per_module():  # the products are stored as recipes within these modules' forward
        undos.append(lean_modules([m for _, m in matched], weights=False, shared=False))
    context.recompute_products = True

    def undo() -> None:
        context.recompute_products = False
        run_in_reverse(undos)

    return undo


def _install(name: str, module: nn.Module) -> UndoFn:
    activation = gated_activation(module)
    assert activation is not None  # checked by _qualifies
    return replace_forward(
        module,
        functools.partial(_fused_forward, activation),
        f"FusedGatedMLP: the forward of {name!r} was replaced after memfit fused it; undo the "
        f"later change first",
    )
