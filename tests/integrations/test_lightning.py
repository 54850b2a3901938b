"""MemfitGuard: a Lightning fit with OOMs matches the fit without."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from memfit.errors import MemfitError
from tests.guard.faults import Budget, make_data, make_model, random_limits

pl = pytest.importorskip("lightning.pytorch")
from memfit.integrations.lightning import MemfitGuard  # noqa: E402

STEPS = 40


class Module(pl.LightningModule):
    def __init__(self, budget: Budget, manual: bool = False) -> None:
        super().__init__()
        self.net = make_model(budget)
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        return F.mse_loss(self.net(batch["x"]), batch["y"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Limits(pl.Callback):
    def __init__(self, budget: Budget, limits: dict[int, float]) -> None:
        self.budget, self.limits = budget, limits

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.budget.limit = self.limits.get(batch_idx, self.budget.limit)


def _fit(guarded: bool, accumulate: int = 1):
    budget = Budget()
    module = Module(budget)
    callbacks = [Limits(budget, random_limits(STEPS, seed=21, every=3))] if guarded else []
    guard = MemfitGuard(grow_after=2)
    trainer = pl.Trainer(
        max_steps=STEPS // accumulate,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accumulate_grad_batches=accumulate,
        callbacks=callbacks + ([guard] if guarded else []),
        gradient_clip_val=0.5,
    )
    loader = torch.utils.data.DataLoader(make_data(STEPS, seed=9), batch_size=None)
    trainer.fit(module, loader)
    return module, budget, guard


@pytest.mark.parametrize("accumulate", [1, 2])
def test_fit_with_ooms_matches_fit_without(accumulate: int) -> None:
    ref, _, _ = _fit(False, accumulate)
    got, budget, guard = _fit(True, accumulate)
    assert budget.raised > 3 and guard.guard is not None
    assert guard.guard.metrics.ooms == budget.raised
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)
    assert "training_step" not in vars(got)  # the module is given back after the fit


def test_manual_optimization_is_refused() -> None:
    trainer = pl.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[MemfitGuard()],
    )
    with pytest.raises(MemfitError, match="automatic optimization"):
        trainer.fit(Module(Budget(), manual=True), [make_data(1)[0]])
