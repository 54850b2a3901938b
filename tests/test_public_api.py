"""The public API as the README and the guide show it: every exported name, the technique table,
the callable packages, a torch-free ``import memfit``, and the documented calls on a tiny model."""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memfit
from memfit.apply.checkpoint import is_checkpointed
from memfit.techniques import TABLE
from memfit.verbs import verb_of
from tests.models import tiny_gpt2

TECHNIQUES = {
    "Checkpoint",
    "MicroBatch",
    "MixedPrecision",
    "ChunkedLoss",
    "FusedActivation",
    "FusedGatedMLP",
    "LeanAutocast",
    "FusedOptimizer",
    "ExpandableSegments",
    "OptimizerInBackward",
    "LowBitOptimizer",
    "PureBF16",
    "Freeze",
    "OffloadOptimizer",
    "OffloadActivations",
    "Sharding",
}
VERBS = ("plan", "apply", "report", "measure")


@pytest.mark.parametrize(
    "package",
    ["memfit", "memfit.plan", "memfit.apply", "memfit.report", "memfit.guard", "memfit.measure"],
)
def test_every_name_in_all_resolves(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names what it lacks: {missing}"
    assert len(set(module.__all__)) == len(module.__all__)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'estimat'"):
        memfit.estimat  # noqa: B018
    assert set(dir(memfit)) == set(memfit.__all__)


def test_the_exported_techniques_are_the_rows_of_the_table() -> None:
    rows = [row.type for row in TABLE]
    assert {t.__name__ for t in rows} == TECHNIQUES and len(rows) == len(TECHNIQUES)
    assert len({row.name for row in TABLE}) == len(TABLE)
    for package in (memfit, memfit.plan):
        exported = {
            name
            for name in package.__all__
            if getattr(getattr(package, name), "__module__", None) == "memfit.technique_settings"
            and isinstance(getattr(package, name), type)
        }
        assert exported == TECHNIQUES, package.__name__
        for kind in rows:
            assert getattr(package, kind.__name__) is kind, (package.__name__, kind)


def test_the_verb_packages_stay_callable_after_their_submodules_are_imported() -> None:
    for name in ("memfit.measure.calibrate", "memfit.plan.search", "memfit.plan.plan"):
        importlib.import_module(name)
    for name in ("memfit.apply.checkpoint", "memfit.report.build", "memfit.measure.run"):
        importlib.import_module(name)
    verbs = {
        "plan": memfit.plan.search.plan,
        "apply": memfit.apply.apply,
        "report": memfit.report.build.report,
        "measure": memfit.measure.run.measure,
    }
    for name, verb in verbs.items():
        package = getattr(memfit, name)
        assert package is sys.modules[f"memfit.{name}"], name  # the package, not a copy
        assert callable(package), name
        assert verb_of(package) is verb, name  # calling it calls the verb
    assert memfit.plan.Plan is memfit.Plan  # and its other names are still there


def test_import_memfit_does_not_import_torch() -> None:
    code = (
        "import sys, memfit; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m); "
        "memfit.__all__; memfit.Checkpoint; "  # the technique classes are plain data too
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)


def _batch(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 100, (16, 32), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def _plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch) -> torch.Tensor:
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def test_the_readme_tour_on_a_tiny_model(tmp_path: Path) -> None:
    """README's Python snippet (and the guide's plan of one's own) on a 2-layer GPT-2, on CPU."""
    torch.manual_seed(0)
    model = tiny_gpt2(dropout=0.0)  # the same function with and without micro-batches
    pristine = copy.deepcopy(model)
    batch = _batch(1)

    profile = memfit.estimate(
        model, batch, optimizer="adamw", precision="bf16-mixed", device="h100-80gb"
    )
    assert isinstance(profile, memfit.MemoryProfile)
    assert profile.precision == "bf16-mixed" and profile.fits()
    assert profile.peak_reserved >= profile.peak_allocated > 0
    assert profile.by_category[memfit.Category.ACTIVATION] > 0
    assert _same_state(model, pristine)  # estimated on fake tensors: the model is untouched

    # a budget below the unmodified step's peak: the planner has to do something
    fp32 = memfit.estimate(model, batch, optimizer="adamw", precision="fp32", device="h100-80gb")
    budget = fp32.peak_reserved - 1
    plan = memfit.plan(model, batch, budget=budget, device="h100-80gb", precision="fp32")
    assert isinstance(plan, memfit.Plan) and plan.techniques and plan.label != "unmodified"
    assert plan.profile.peak_reserved <= budget < fp32.peak_reserved
    assert plan.overhead is not None and plan.overhead >= 0
    assert memfit.Plan.from_json(plan.to_json()).techniques == plan.techniques

    # apply it and train: the same steps as the plain loop (to rounding, for micro-batches)
    fused = bool(plan.of(memfit.FusedOptimizer))
    reference = copy.deepcopy(pristine)
    reference_opt = torch.optim.AdamW(reference.parameters(), lr=1e-3, fused=fused or None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = memfit.apply(plan, model, optimizer)
    assert isinstance(step, memfit.TrainStep)
    loss = step(batch)
    torch.testing.assert_close(loss, _plain_step(reference, reference_opt, batch))
    guarded = memfit.OOMGuard(step)
    batch2 = _batch(2)
    torch.testing.assert_close(guarded(batch2), _plain_step(reference, reference_opt, batch2))
    assert all(group.get("fused") for group in optimizer.param_groups) == fused
    plan.undo(model)
    assert not any(group.get("fused") for group in optimizer.param_groups)  # switched back
    # Adam divides by sqrt(v): rounding in small gradients moves an update by up to ~1% of lr
    trained = dict(model.named_parameters())
    for name, want in reference.named_parameters():
        torch.testing.assert_close(trained[name], want, rtol=0, atol=1e-4, msg=name)
    start = dict(pristine.named_parameters())
    moved = max((p - start[name]).abs().max() for name, p in trained.items())
    assert moved > 1e-3  # two steps of lr 1e-3 did train it

    # a plan of one's own (the guide): predicted, applied, and undone exactly
    mine = [
        memfit.Checkpoint(modules=("layers.*",)),
        memfit.MicroBatch(n=2),
        memfit.ChunkedLoss(chunks=8),
    ]
    predicted = memfit.estimate(model, batch, device="h100-80gb", plan=mine)
    activations = memfit.Category.ACTIVATION
    assert predicted.by_category[activations] < profile.by_category[activations]
    model = copy.deepcopy(pristine)
    forwards = {name: type(m).forward for name, m in model.named_modules()}
    memfit.apply(mine, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert all(is_checkpointed(layer) for layer in model.layers)
    assert type(model.lm_head) is not type(pristine.lm_head)  # the chunked loss took the head
    memfit.Plan(techniques=tuple(mine)).undo(model)
    assert _same_state(model, pristine)
    assert [type(m) for m in model.modules()] == [type(m) for m in pristine.modules()]
    assert {name: type(m).forward for name, m in model.named_modules()} == forwards
    assert not any("forward" in vars(m) for m in model.modules())  # no forward left patched
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, pristine(**batch).logits)

    # the report: an HTML page, and the terminal's tables as a string
    path = memfit.report(profile, tmp_path / "report.html")
    html = Path(path).read_text()
    assert html.lstrip().lower().startswith("<!doctype html")
    assert memfit.format_bytes(profile.peak_reserved) in html
    text = memfit.report.profile_text(profile)
    assert memfit.format_bytes(profile.peak_reserved) in text


def _same_state(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    a, b = model.state_dict(), other.state_dict()
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
