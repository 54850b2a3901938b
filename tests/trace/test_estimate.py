"""memfit.estimate on models small enough to account for by hand."""

from __future__ import annotations

import torch

import memfit
from memfit.profile import Category, MemoryProfile
from memfit.step.loss import MEAN_OUTPUT_LOSS
from memfit.trace.allocator import round_size
from tests.models import TINY_GPT2_INPUT, tiny_gpt2, tiny_mlp

F32, BF16 = 4, 2
BATCH = "float32[64,32]"
W1, W2 = 128 * 32, 16 * 128  # elements


def modules_by_name(profile: MemoryProfile) -> dict:
    return {m.fqn: m for m in profile.modules}


def test_fp32_saved_activations_per_module():
    # ReLU keeps its output for backward; the linears keep only their inputs, which are the
    # batch (allocated before the step) and ReLU's output; the root keeps the loss.
    profile = memfit.estimate(tiny_mlp(), BATCH, precision="fp32", optimizer="adamw")
    modules = modules_by_name(profile)
    assert modules["0"].self_activation_bytes == 0
    assert modules["1"].self_activation_bytes == 64 * 128 * F32
    assert modules["2"].self_activation_bytes == 0
    assert modules[""].self_activation_bytes == round_size(F32)  # the scalar loss
    assert modules[""].activation_bytes == 64 * 128 * F32 + round_size(F32)
    assert modules["0"].param_bytes == W1 * F32
    assert modules[""].param_bytes == (W1 + W2) * F32


def test_bf16_mixed_keeps_low_precision_copies_as_cuda_autocast_does():
    # CUDA autocast casts the input and weight of each linear to bf16. mm saves its input when
    # the weight needs a gradient and its weight when the input needs one: the first linear's
    # input is the batch (no gradient), so it keeps only its bf16 input and its bf16 weight
    # copy dies when autocast exits; the second keeps its bf16 weight (its input, ReLU's bf16
    # output, is already saved by ReLU).
    profile = memfit.estimate(tiny_mlp(), BATCH, precision="bf16-mixed", optimizer="adamw")
    modules = modules_by_name(profile)
    assert modules["0"].self_activation_bytes == 64 * 32 * BF16
    assert modules["1"].self_activation_bytes == 64 * 128 * BF16
    assert modules["2"].self_activation_bytes == W2 * BF16


def test_categories_sum_to_the_allocated_peak_and_match_the_model():
    profile = memfit.estimate(tiny_mlp(), BATCH, precision="fp32", optimizer="adamw")
    assert sum(profile.by_category.values()) == profile.peak_allocated
    param_bytes = round_size(W1 * F32) + round_size(W2 * F32)
    assert profile.by_category[Category.PARAM] == param_bytes
    # AdamW keeps exp_avg and exp_avg_sq per parameter; its step counters live on the host
    assert profile.by_category[Category.OPTIMIZER] == 2 * param_bytes
    assert profile.peak_reserved >= profile.peak_allocated
    assert profile.source == "estimate" and profile.optimizer == "adamw"


def test_sgd_without_momentum_has_no_state_and_no_optimizer_bytes():
    def plain_sgd(params):
        return torch.optim.SGD(params, lr=0.1)

    profile = memfit.estimate(tiny_mlp(), BATCH, precision="fp32", optimizer=plain_sgd)
    assert profile.by_category[Category.OPTIMIZER] == 0


def test_gradients_are_counted_when_the_peak_is_in_the_optimizer_step():
    profile = memfit.estimate(tiny_mlp(), BATCH, precision="fp32", optimizer="adamw")
    timeline_phases = {event.phase.value for event in profile.timeline}
    assert {"forward", "backward", "optimizer"} <= timeline_phases


def test_the_user_module_is_left_untouched():
    model = tiny_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    memfit.estimate(model, torch.randn(64, 32), precision="bf16-mixed")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_a_builder_allocates_nothing_real():
    built = []

    def build():
        model = tiny_mlp()
        built.append(model)
        return model

    memfit.estimate(build, BATCH, precision="fp32")
    weight = built[0][0].weight
    assert type(weight).__name__ == "FakeTensor" or "Fake" in type(weight).__name__


def test_zoo_model_by_name_with_its_default_batch():
    profile = memfit.estimate("gpt2", batch_size=1, seq_len=64, precision="bf16-mixed")
    assert profile.model == "gpt2"
    assert "input_ids=int64[1,64]" in profile.batch
    # 124,439,808 fp32 parameters (tied head counted once)
    assert profile.by_category[Category.PARAM] >= 124_439_808 * F32


def test_json_round_trip_of_a_real_profile():
    profile = memfit.estimate(tiny_gpt2(), TINY_GPT2_INPUT, precision="bf16-mixed")
    again = MemoryProfile.from_json(profile.to_json())
    assert again == profile


def test_peak_grows_with_the_batch():
    small = memfit.estimate(tiny_gpt2(), "input_ids=int64[2,32]<100 labels=int64[2,32]<100")
    large = memfit.estimate(tiny_gpt2(), "input_ids=int64[16,32]<100 labels=int64[16,32]<100")
    assert large.peak_allocated > small.peak_allocated


def test_the_name_none_means_no_optimizer_step() -> None:
    without = memfit.estimate(tiny_mlp, BATCH, optimizer=None, precision="fp32")
    named = memfit.estimate(tiny_mlp, BATCH, optimizer="None", precision="fp32")
    assert named.optimizer is None and named.by_category == without.by_category
    assert named.by_category.get(Category.OPTIMIZER, 0) == 0


def test_a_step_without_a_loss_says_it_predicted_the_mean_output_as_its_loss():
    # tiny_mlp returns its output; no loss_fn: the prediction's loss is a stand-in, named
    assert MEAN_OUTPUT_LOSS in memfit.estimate(tiny_mlp(), BATCH).warnings
    given = memfit.estimate(tiny_mlp(), BATCH, loss_fn=lambda output, batch: output.pow(2).mean())
    assert MEAN_OUTPUT_LOSS not in given.warnings
    assert MEAN_OUTPUT_LOSS not in memfit.estimate(tiny_gpt2(), TINY_GPT2_INPUT).warnings
