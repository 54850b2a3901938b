"""Profiles name the software that made them and the stack they model, and warn on a mismatch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import memfit
from memfit.devices import get_device
from memfit.errors import InvalidInputError
from memfit.measure.readings import stack_warnings
from memfit.profile import MemoryProfile
from memfit.report.compare import diff_profiles, diff_text, version_differences
from memfit.report.text import profile_text
from memfit.trace.cuda.sdpa import SdpaBackend, SdpaCall, choose_backend
from memfit.trace.cuda.stack import DEFAULT_STACK, TORCH_RULES, minor_version, stack_for
from memfit.trace.versions import version_warnings
from tests.models import tiny_mlp

HERE = minor_version(torch.__version__)


def test_minor_version_reads_builds_and_local_labels():
    assert minor_version("2.14.1+cu130") == "2.14"
    assert minor_version("2.6.0") == "2.6"
    assert minor_version("nightly") == ""


def test_stack_for_a_release_takes_its_rules_and_its_wheels_cudnn():
    old = stack_for("2.6.0")
    assert old.torch_version == "2.6" and old.cudnn == "9.1"
    assert not old.cudnn_sdpa_preferred
    assert stack_for() == DEFAULT_STACK
    assert stack_for("2.11", "9.19.0") == DEFAULT_STACK
    assert stack_for(cudnn_version="9.10").cudnn_version == 91000
    assert stack_for(cudnn_version=91002).cudnn_version == 91002


@pytest.mark.parametrize("bad", [("2.5", None), ("3.0", None), (None, "nine"), (None, "9")])
def test_unknown_releases_and_malformed_versions_are_refused(bad):
    with pytest.raises(InvalidInputError, match="torch version|cuDNN version"):
        stack_for(*bad)


def test_the_release_changes_the_attention_kernel_on_hopper():
    # torch 2.11 with cuDNN 9.19 tries cuDNN attention first on sm90; torch 2.6 (cuDNN 9.1)
    # does not, so bf16 training attention runs the flash kernel
    q = torch.empty(2, 4, 256, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
    attention = SdpaCall.of(q, q, q, None, 0.0, True, False)
    h100 = get_device("h100-80gb")
    assert choose_backend(attention, h100, DEFAULT_STACK) is SdpaBackend.CUDNN
    assert choose_backend(attention, h100, stack_for("2.6")) is SdpaBackend.FLASH


def test_every_release_since_2_6_has_rules():
    newest = max(int(r.split(".")[1]) for r in TORCH_RULES)
    assert set(TORCH_RULES) == {f"2.{m}" for m in range(6, newest + 1)}
    assert TORCH_RULES["2.11"].cudnn_sdpa_preferred == DEFAULT_STACK.cudnn_sdpa_preferred


def test_a_profile_records_what_traced_it_and_the_stack_it_models():
    profile = memfit.estimate(tiny_mlp(), "float32[8,32]", precision="fp32")
    assert profile.versions["torch"] == torch.__version__
    assert profile.versions["memfit"] == memfit.__version__
    assert "transformers" not in profile.versions  # the model is plain torch
    assert profile.target_stack == {"torch": "2.11", "cudnn": "9.19"}
    again = MemoryProfile.from_json(profile.to_json())
    assert again.versions == profile.versions and again.target_stack == profile.target_stack
    text = profile_text(profile)
    assert f"traced with torch {torch.__version__}" in text
    assert "target torch 2.11 + cuDNN 9.19" in text


def test_a_torch_release_other_than_the_targets_is_warned_about():
    target = dataclasses.replace(DEFAULT_STACK, torch_version=HERE)
    same = memfit.estimate(tiny_mlp(), "float32[8,32]", precision="fp32", stack=target)
    assert not [w for w in same.warnings if w.startswith("traced with torch")]
    other = "2.6" if HERE != "2.6" else "2.7"
    differs = memfit.estimate(tiny_mlp(), "float32[8,32]", precision="fp32", stack=stack_for(other))
    (warning,) = [w for w in differs.warnings if w.startswith("traced with torch")]
    assert f"torch {HERE}" in warning and f"target is torch {other}" in warning
    assert f"--torch-version {HERE}" in warning
    assert differs.target_stack["torch"] == other
    assert version_warnings({"torch": "2.11.0+cu130"}, DEFAULT_STACK) == []


def test_a_transformers_model_records_the_transformers_release():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    profile = memfit.estimate(
        lambda: transformers.GPT2LMHeadModel(config),
        "input_ids=int64[1,8]<64 labels=int64[1,8]<64",
        precision="fp32",
    )
    assert profile.versions["transformers"] == transformers.__version__


def test_comparing_profiles_names_the_libraries_whose_release_differs():
    base = memfit.estimate(tiny_mlp(), "float32[8,32]", precision="fp32")
    measured = dataclasses.replace(
        base,
        source="measure",
        versions={**base.versions, "torch": "2.11.0+cu130", "transformers": "5.17.0"},
        target_stack={"torch": "2.11", "cudnn": "9.19"},
    )
    # the estimate models torch 2.11: no torch line; transformers only where both have it
    assert version_differences(base, measured) == []
    with_hf = dataclasses.replace(base, versions={**base.versions, "transformers": "5.25.0"})
    (line,) = version_differences(with_hf, measured)
    assert "transformers 5.25.0 (A) against 5.17.0 (B)" in line
    newer = dataclasses.replace(measured, target_stack={"torch": "2.13", "cudnn": "9.19"})
    assert any("torch 2.11 (A) against 2.13 (B)" in x for x in version_differences(base, newer))
    assert line in diff_text(diff_profiles(with_hf, measured, ("estimate", "measured")))


def test_a_measurement_on_another_stack_says_how_to_predict_for_it():
    assert stack_warnings({"torch": "2.11", "cudnn": "9.19"}) == ()
    (note,) = stack_warnings({"torch": "2.13", "cudnn": "9.20"})
    assert "measured with torch 2.13 + cuDNN 9.20;" in note
    assert "--torch-version 2.13 --cudnn-version 9.20" in note
