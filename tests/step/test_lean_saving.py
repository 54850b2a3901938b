"""FusedGatedMLP and LeanAutocast: bit-identical gradients, fewer bytes kept, exact undo, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import InvalidInputError, MemfitError
from memfit.step.context import ApplyContext
from memfit.step.lean_saving import lean_saving
from memfit.step.registry import apply_techniques
from memfit.step.undo import undo_all
from memfit.techniques import Checkpoint, FusedGatedMLP, LeanAutocast
from tests.helpers import (
    VOCAB,
    StorageTracker,
    hf_gpt2,
    hf_llama,
    price_host,
    tiny_llama,
    token_batch,
)

GATED = FusedGatedMLP(modules=("**.mlp",))


@pytest.fixture(params=["per-module", "around-forward"])
def hooks_where(request, monkeypatch):
    """Both ways the step runs the hooks: pushed by each lean module (PyTorch >= 2.8, which
    tells the innermost hooks) or around the whole forward (older PyTorch)."""
    import memfit.step.lean_saving as lean

    if request.param == "per-module" and not lean.SCOPED_HOOKS:
        pytest.skip("this PyTorch cannot tell the innermost saved-tensor hooks")
    monkeypatch.setattr(lean, "SCOPED_HOOKS", request.param == "per-module")
    return request.param


def step_grads(model: nn.Module, techniques: list, precision: str, batch: dict) -> tuple:
    """One TrainStep (no optimizer) on a copy of ``model``: its loss and every gradient."""
    model = copy.deepcopy(model).float()
    step = memfit.apply(techniques, model, None, precision=precision, device_type="cpu")
    loss = step(batch)
    return loss, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
@pytest.mark.parametrize(
    "techniques",
    [
        [GATED],
        [LeanAutocast()],
        [LeanAutocast(modules=("model.layers.1",))],
        [GATED, LeanAutocast(), Checkpoint(modules=("model.layers.0",))],
        # lean modules inside a checkpointed block: checkpointing's hooks decide there, in
        # forward and in recomputation
        [
            GATED,
            LeanAutocast(modules=("model.layers.0.self_attn", "model.layers.1")),
            Checkpoint(modules=("model.layers.0",)),
        ],
    ],
    ids=["gated", "lean-autocast", "lean-one-block", "both+checkpoint", "lean-in-checkpoint"],
)
def test_gradients_are_bit_identical(techniques, precision, hooks_where):
    model, batch = hf_llama(), token_batch()
    loss, grads = step_grads(model, [], precision, batch)
    loss_lean, grads_lean = step_grads(model, techniques, precision, batch)
    assert torch.equal(loss, loss_lean)
    assert grads.keys() == grads_lean.keys()
    for name, grad in grads.items():
        assert torch.equal(grad, grads_lean[name]), name


def test_zoo_llama_gradients_are_bit_identical():
    batch = token_batch()
    model = tiny_llama()
    _, grads = step_grads(model, [], "bf16-mixed", batch)
    _, lean = step_grads(
        model, [FusedGatedMLP(("layers.*.mlp",)), LeanAutocast()], "bf16-mixed", batch
    )
    assert all(torch.equal(grads[n], lean[n]) for n in grads)


def kept_after_forward(model: nn.Module, context: ApplyContext, lean: bool) -> int:
    """Elements alive between forward and backward under bf16 autocast."""
    batch = token_batch(batch_size=4, seq_len=16)
    tracker = StorageTracker()
    cache = not lean
    with tracker, torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=cache):
        with lean_saving(weights=lean, shared=lean) if lean else torch.enable_grad():
            loss = model(**batch).loss
    kept = sum(s.numel for s in tracker.alive())
    loss.backward()
    return kept


def test_each_keeps_less_for_backward():
    plain = kept_after_forward(hf_llama().float(), ApplyContext(), lean=False)
    lean = kept_after_forward(hf_llama().float(), ApplyContext(), lean=True)
    model, context = hf_llama().float(), ApplyContext()
    apply_techniques(model, [GATED], context=context)
    with lean_saving(weights=False, shared=False):  # what the step does for FusedGatedMLP
        gated = kept_after_forward(model, context, lean=False)
    assert lean < plain and gated < plain


def test_the_hooks_store_recipes_for_all_three_kinds(monkeypatch):
    import memfit.step.lean_saving as lean

    kinds: list[str] = []
    original = lean._pack

    def counting(state, saved):
        packed = original(state, saved)
        if packed is not saved:
            kinds.append(type(packed.inner).__name__)
        return packed

    monkeypatch.setattr(lean, "_pack", counting)
    step_grads(hf_llama(), [GATED, LeanAutocast()], "bf16-mixed", token_batch())
    # weights cast again; k and v share q's input cast, up shares gate's; gated products
    assert {"_Recast", "Tensor", "_Recompute"} <= set(kinds)


def recast_weights(techniques: list) -> list[tuple[int, ...]]:
    """The shapes of the weights one bf16 step keeps as recipes (cast again in backward)."""
    import memfit.step.lean_saving as lean

    shapes: list[tuple[int, ...]] = []
    original = lean._pack

    def counting(state, saved):
        packed = original(state, saved)
        if packed is not saved and isinstance(packed.inner, lean._Recast):
            shapes.append(tuple(packed.inner.param.shape))
        return packed

    lean._pack = counting
    try:
        step_grads(hf_llama(), techniques, "bf16-mixed", token_batch())
    finally:
        lean._pack = original
    return shapes


def test_lean_modules_recast_only_their_own_weights(hooks_where):
    model = hf_llama()
    everywhere = recast_weights([LeanAutocast()])
    one_block = recast_weights([LeanAutocast(modules=("model.layers.0",))])
    block_weights = {tuple(p.shape) for p in model.model.layers[0].parameters() if p.dim() == 2}
    # every linear layer of every block and the head, against the seven of block 0
    assert len(everywhere) > len(one_block) == 7
    assert set(one_block) <= block_weights


def hooked(techniques: list) -> int:
    """Tensors the hooks see in one bf16 step."""
    import memfit.step.lean_saving as lean

    seen = [0]
    original = lean._pack

    def counting(state, saved):
        seen[0] += 1
        return original(state, saved)

    lean._pack = counting
    try:
        step_grads(hf_llama(), techniques, "bf16-mixed", token_batch())
    finally:
        lean._pack = original
    return seen[0]


def test_per_module_hooks_see_only_the_lean_modules_tensors(hooks_where):
    """Pushed by the lean modules, the hooks cost one block's Python for one block; around the
    whole forward they see every tensor whichever blocks are lean."""
    whole = hooked([LeanAutocast()])
    one_block = hooked([LeanAutocast(modules=("model.layers.0",))])
    if hooks_where == "per-module":
        assert 0 < one_block < whole / 2  # two blocks and the head
    else:
        assert one_block == whole


def test_lean_modules_undo_removes_their_hooks():
    model, context = hf_llama(), ApplyContext()
    block = model.model.layers[0]
    apply_techniques(model, [LeanAutocast(modules=("model.layers.0",))], context=context)
    assert context.lean_autocast and block._forward_pre_hooks and block._forward_hooks
    undo_all(model)
    assert not (context.lean_autocast or block._forward_pre_hooks or block._forward_hooks)


def test_lean_modules_must_name_modules_of_the_model():
    with pytest.raises(InvalidInputError, match="LeanAutocast pattern 'model.blocks.0'"):
        apply_techniques(
            hf_llama(), [LeanAutocast(modules=("model.blocks.0",))], context=ApplyContext()
        )


def test_the_hooks_are_priced_per_saved_tensor(monkeypatch):
    """``Calibration.lean_tensor_s`` per tensor the hooks see: at a second a tensor the step
    is the CPU's, so the predicted step grows by about the number of tensors saved."""
    import memfit.step.lean_saving as lean

    seen = []
    original = lean._pack
    monkeypatch.setattr(lean, "_pack", lambda state, s: seen.append(1) or original(state, s))
    times = {}
    for price in (0.0, 1.0):
        price_host(monkeypatch, lean_tensor_s=price, lean_recipe_s=0.0)
        seen.clear()
        times[price] = memfit.estimate(
            hf_llama, token_batch(), plan=[LeanAutocast()], precision="bf16-mixed"
        ).step_time_s
    assert seen and times[1.0] - times[0.0] == pytest.approx(len(seen), rel=0.05)


def test_a_weight_changed_between_forward_and_backward_raises():
    model = hf_llama().float()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False), lean_saving():
        loss = model(**token_batch()).loss
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    with pytest.raises(MemfitError, match="changed in place between forward and backward"):
        loss.backward()


def test_undo_restores_the_class_forward():
    model = hf_llama()
    mlp = model.model.layers[0].mlp
    context = ApplyContext()
    apply_techniques(model, [GATED], context=context)
    assert "forward" in mlp.__dict__ and context.recompute_products
    undo_all(model)
    assert "forward" not in mlp.__dict__


def test_refuses_modules_that_are_not_gated_mlps():
    with pytest.raises(InvalidInputError, match="not a gated MLP"):
        apply_techniques(hf_llama(), [FusedGatedMLP(("model.layers.0",))], context=ApplyContext())
    with pytest.raises(InvalidInputError, match="none in this model"):
        apply_techniques(
            hf_gpt2(), [FusedGatedMLP(("transformer.h.0.mlp",))], context=ApplyContext()
        )


def test_estimate_predicts_less_memory_with_them():
    from memfit.zoo.llama import Llama, LlamaConfig

    def build() -> nn.Module:
        return Llama(
            LlamaConfig(
                n_layers=2, dim=256, n_heads=4, n_kv_heads=4, hidden_dim=704, vocab_size=VOCAB
            )
        )

    batch = {"input_ids": torch.zeros(4, 256, dtype=torch.long)}
    batch["labels"] = batch["input_ids"]
    options = dict(precision="bf16-mixed", device="h100-80gb")
    plain = memfit.estimate(build, batch, **options)
    lean = memfit.estimate(
        build, batch, plan=[FusedGatedMLP(("layers.*.mlp",)), LeanAutocast()], **options
    )
    assert lean.peak_allocated < plain.peak_allocated


@pytest.mark.gpu
def test_gradients_are_bit_identical_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model, batch = hf_llama().float().cuda(), token_batch()
    batch = {k: v.cuda() for k, v in batch.items()}
    grads = []
    for techniques in ([], [GATED, LeanAutocast()]):
        copied = copy.deepcopy(model)
        memfit.apply(techniques, copied, None, precision="bf16-mixed")(batch)
        grads.append({n: p.grad for n, p in copied.named_parameters()})
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_warns_when_the_model_is_compiled(monkeypatch):
    model = hf_llama().float()
    step = memfit.apply([LeanAutocast()], model, None, precision="bf16-mixed", device_type="cpu")
    monkeypatch.setattr(model, "_compiled_call_impl", lambda *a, **k: model.forward(*a, **k))
    with pytest.warns(UserWarning, match="torch.compile decides"):
        step(token_batch())
