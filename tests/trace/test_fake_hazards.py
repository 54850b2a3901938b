"""Models whose code fake tensors cannot follow as written: initialisation that loops on values,
builders that compute shapes from tensor values, modules moved while being built, TorchScript
helpers, meta kernels stricter than CUDA's, and loops that never end (the watchdog)."""

from __future__ import annotations

import sys
import time

import pytest
import torch
from torch import nn

import memfit
from memfit.errors import UnsupportedModelError
from memfit.profile import Category
from memfit.step.loss import MEAN_OUTPUT_LOSS
from memfit.trace.allocator import round_size
from memfit.trace.estimate import trace_step

F32 = 4


def param_bytes(module: nn.Module) -> int:
    return sum(round_size(p.numel() * p.element_size()) for p in module.parameters())


class TruncNormalInit(nn.Module):
    """Initialised as torchvision's ViT and ConvNeXt are: ``nn.init.trunc_normal_``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 64)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_trunc_normal_initialisation_does_not_loop_on_fake_tensors():
    started = time.perf_counter()
    profile = memfit.estimate(TruncNormalInit, "float32[8,32]", precision="fp32", timeout_s=20)
    assert time.perf_counter() - started < 20
    assert profile.by_category[Category.PARAM] == param_bytes(TruncNormalInit())
    # the patch is gone afterwards: real tensors sample from the truncated normal again
    weight = nn.init.trunc_normal_(torch.empty(1000), std=1.0, a=-0.5, b=0.5)
    assert weight.abs().max() <= 0.5 and weight.std() > 0.1


class WidthsFromTensors(nn.Module):
    """Computes its widths with tensor arithmetic, as torchvision's RegNet does."""

    def __init__(self) -> None:
        super().__init__()
        widths = (torch.arange(3) * 24 + 16).int().tolist()  # [16, 40, 64]
        layers, previous = [], 8
        for width in widths:
            layers += [nn.Linear(previous, width), nn.ReLU()]
            previous = width
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_builder_that_reads_tensor_values_builds_the_real_model():
    profile = memfit.estimate(WidthsFromTensors, "float32[4,8]", precision="fp32")
    assert profile.by_category[Category.PARAM] == param_bytes(WidthsFromTensors())
    assert not any(".item()" in w for w in profile.warnings)


class MovedWhileBuilt(nn.Module):
    """Moves a child to the device and dtype of another while being built, as peft does."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(16, 16)
        self.adapter = nn.Linear(16, 4).to(self.base.weight.device, dtype=self.base.weight.dtype)
        self.head = nn.Linear(4, 16).to(torch.bfloat16).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.head(self.adapter(x))


def test_modules_moved_while_being_built_keep_their_parameters():
    profile = memfit.estimate(MovedWhileBuilt, "float32[4,16]", precision="fp32")
    assert profile.by_category[Category.PARAM] == param_bytes(MovedWhileBuilt())


@pytest.mark.slow
def test_peft_lora_models_are_estimated_with_only_the_adapters_trained():
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=256,
    )

    def build() -> nn.Module:
        lora = peft.LoraConfig(r=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        return peft.get_peft_model(transformers.LlamaForCausalLM(config), lora)

    spec = "input_ids=int64[2,16]<256 labels=int64[2,16]<256"
    profile = memfit.estimate(build, spec, precision="fp32", optimizer="adamw")
    real = build()
    trainable = [p for p in real.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(list(real.parameters()))
    assert profile.by_category[Category.PARAM] == param_bytes(real)
    adam_state = sum(2 * round_size(p.numel() * F32) for p in trainable)
    assert profile.by_category[Category.OPTIMIZER] == adam_state


@torch.jit.script
def scripted_scale(x: torch.Tensor, factor: float) -> torch.Tensor:
    return x * factor + 1.0


class UsesScriptedHelper(nn.Module):
    """Calls a module-level TorchScript function, as DeBERTa-v2's attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scripted_scale(self.proj(x), 0.5)


class UsesPlainHelper(UsesScriptedHelper):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * 0.5 + 1.0


def test_torchscript_helpers_run_as_the_python_they_were_compiled_from():
    scripted = memfit.estimate(UsesScriptedHelper(), "float32[8,16]", precision="fp32")
    plain = memfit.estimate(UsesPlainHelper(), "float32[8,16]", precision="fp32")
    assert scripted.peak_allocated == plain.peak_allocated
    assert isinstance(scripted_scale, torch.jit.ScriptFunction)  # put back afterwards


class GroupedExperts(nn.Module):
    """Four experts applied with one grouped GEMM, as transformers' MoE layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 16, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offsets = torch.tensor([8, 16, 24, 32], dtype=torch.int32, device=x.device)
        return torch._grouped_mm(x, self.weight, offs=offsets)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch without _grouped_mm")
def test_float32_grouped_gemm_allocates_cudas_padded_output():
    traced = trace_step(GroupedExperts(), "float32[32,16]", precision="fp32", optimizer=None)
    outputs = [a for a in traced.trace.allocations.values() if a.op == "_grouped_mm"]
    assert outputs, "the grouped GEMM ran on fake tensors"
    # rows of 6 float32 values padded to 16 bytes (8 values) apart: the storage ends at the
    # last row's sixth value
    assert outputs[0].size == (31 * 8 + 6) * F32
    assert outputs[0].shape == (32, 6)


class LoopsOnValues(nn.Module):
    """Waits for a condition that fake tensors cannot settle (memfit assumes True)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x)
        while bool((y > 100).any()):
            y = y * 0.5
        return y


def test_a_loop_on_tensor_values_is_stopped_with_a_message_naming_it():
    started = time.perf_counter()
    with pytest.raises(UnsupportedModelError) as caught:
        memfit.estimate(LoopsOnValues(), "float32[4,8]", precision="fp32", timeout_s=2)
    assert time.perf_counter() - started < 15
    message = str(caught.value)
    assert "after 2 s" in message and "forward" in message and "timeout_s" in message
    assert "test_fake_hazards.py" in message


def test_the_stall_is_placed_in_user_code_not_in_pythons_library():
    # the deadline can fall inside a weakref callback the garbage collector runs
    from memfit.trace import watchdog

    namespace: dict = {"sys": sys}
    callback = compile(
        "def callback():\n    return sys._getframe()\n", watchdog._STDLIB + "weakref.py", "exec"
    )
    exec(callback, namespace)

    def users_loop():
        return namespace["callback"]()

    place, _ = watchdog._where(users_loop())
    assert place.startswith("users_loop (") and "test_fake_hazards.py" in place


class BuildsForever(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        while torch.ones(2).sum() > 0:
            pass


def test_a_builder_that_never_returns_is_stopped_naming_the_module():
    with pytest.raises(UnsupportedModelError, match="building the model.*BuildsForever"):
        memfit.estimate(BuildsForever, "float32[4,8]", precision="fp32", timeout_s=2)


class ReadsItsWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 64)  # more elements than memfit computes values for
        if self.proj.weight.abs().max() > 10:
            raise ValueError("badly initialised")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def test_a_builder_that_reads_parameter_values_is_refused_clearly():
    with pytest.raises(UnsupportedModelError, match="reads the value of a tensor"):
        memfit.estimate(ReadsItsWeights, "float32[4,64]", precision="fp32")


def test_the_watchdog_leaves_nothing_behind_after_a_quick_estimate():
    memfit.estimate(TruncNormalInit(), "float32[8,32]", precision="fp32", timeout_s=1)
    time.sleep(1.5)  # past the deadline: no exception may arrive now
    assert sum(range(1000)) == 499500


class LayerDrop(nn.Module):
    """Skips each layer when a random draw is below ``layerdrop``, as Hugging Face's
    encoder-decoders (BART, Whisper) do in training."""

    def __init__(self, layerdrop: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        self.layerdrop = layerdrop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.training and torch.rand([]) < self.layerdrop:
                continue
            x = torch.relu(layer(x))
        return x


@pytest.mark.parametrize("layerdrop", [0.0, 0.3])
def test_small_tensors_computed_from_constants_have_their_real_values(layerdrop):
    # layerdrop 0 never skips; a draw is 0.496 (seeded), so 0.3 keeps every layer too, and the
    # prediction does not change from run to run
    profile = memfit.estimate(LayerDrop(layerdrop), "float32[64,16]", precision="fp32")
    all_layers = memfit.estimate(LayerDrop(-1.0), "float32[64,16]", precision="fp32")
    assert profile.peak_allocated == all_layers.peak_allocated
    assert profile.by_category[Category.GRAD] + profile.by_category[Category.OPTIMIZER] > 0
    # no assumption about a value read (the others: the torch release, the stand-in loss)
    notes = [w for w in profile.warnings if w != MEAN_OUTPUT_LOSS]
    assert [w for w in notes if not w.startswith("traced with torch")] == []


@pytest.mark.slow
def test_hugging_face_encoder_decoders_train_every_layer():
    transformers = pytest.importorskip("transformers")
    config = transformers.BartConfig(
        vocab_size=256,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    )
    model = transformers.BartForConditionalGeneration(config)
    spec = "input_ids=int64[2,32]<256 labels=int64[2,16]<256"
    profile = memfit.estimate(model, spec, precision="fp32", optimizer="adamw")
    trained = [p for p in model.parameters() if p.requires_grad]
    assert profile.by_category[Category.OPTIMIZER] == sum(
        2 * round_size(p.numel() * F32) for p in trained
    )
    assert not any(".item()" in w for w in profile.warnings)
