"""guard_trainer: a Hugging Face Trainer run with OOMs matches the run without."""

from __future__ import annotations

import pytest
import torch

from memfit.errors import InvalidInputError
from memfit.integrations.hf import guard_trainer

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it


class _Limit:
    def __init__(self) -> None:
        self.limit = float("inf")
        self.raised = 0


def _gpt2():  # its loss is divided by the Trainer's num_items_in_batch
    config = transformers.GPT2Config(
        vocab_size=40,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def _bart():  # takes **kwargs but its own token mean: the Trainer's count changes nothing
    config = transformers.BartConfig(
        vocab_size=40,
        max_position_embeddings=16,
        d_model=16,
        decoder_layers=1,
        decoder_attention_heads=2,
        decoder_ffn_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        forced_eos_token_id=None,
    )
    return transformers.BartForCausalLM(config)


def _train(tmp_path, guarded: bool, limits: dict[int, float], build=_gpt2):
    torch.manual_seed(0)
    model = build().double()
    budget = _Limit()

    def pre_hook(module, args, kwargs):
        if kwargs["input_ids"].shape[0] > budget.limit:
            budget.raised += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")

    model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    gen = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 40, (12,), generator=gen)} for _ in range(48)]
    for row in data:
        row["labels"] = row["input_ids"]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=6,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=3,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    if guarded:
        guard_trainer(trainer, grow_after=1)
        original = trainer.training_step
        calls = {"n": 0}

        def counted(model, inputs, num_items_in_batch=None):
            budget.limit = limits.get(calls["n"], budget.limit)
            calls["n"] += 1
            return original(model, inputs, num_items_in_batch)

        trainer.training_step = counted
    trainer.train()
    return model, budget, trainer


@pytest.mark.slow
@pytest.mark.parametrize("build", [_gpt2, _bart], ids=["gpt2", "bart"])
def test_trainer_with_ooms_matches_trainer_without(tmp_path, build) -> None:
    # BART: its parts' means were summed unweighted (the Trainer says the model takes
    # num_items_in_batch), twice to three times the gradient after a split
    limits = {1: 3, 3: float("inf"), 4: 5}
    ref, _, _ = _train(tmp_path / "ref", False, {}, build)
    got, budget, trainer = _train(tmp_path / "got", True, limits, build)
    assert budget.raised >= 3
    assert trainer.memfit_guard.metrics.ooms == budget.raised
    for p, q in zip(ref.parameters(), got.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-10)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all(entry["loss"] > 0 for entry in logged)


def test_not_a_trainer() -> None:
    with pytest.raises(InvalidInputError, match="not a transformers.Trainer"):
        guard_trainer(object())


def test_the_model_inside_peft_and_wrappers_is_the_one_read() -> None:
    from torch import nn

    from memfit.integrations.hf import _innermost

    peft = pytest.importorskip("peft")
    base = _gpt2()
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"]))

    class Wrapper(nn.Module):  # as DDP and accelerate hold it
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert _innermost(Wrapper(lora)) is base
    assert _innermost(base) is base
