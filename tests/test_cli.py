"""The command line, through main([...]) as a user types it."""

from __future__ import annotations

import json

from memfit.cli import main

MODEL_FILE = """
import torch
from torch import nn

def build_model():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))

def loss(output, batch):
    return output.float().pow(2).mean()
"""


def write_model(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(MODEL_FILE)
    return path


def test_estimate_a_zoo_model(capsys):
    assert main(["estimate", "gpt2", "--batch-size", "1", "--seq-len", "32"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt2 on h100-80gb")
    assert "peak reserved" in out and "verdict" in out and "FITS" in out
    assert "activation" in out and "module" in out


def test_estimate_json(capsys):
    assert (
        main(["estimate", "gpt2", "--batch-size", "1", "--seq-len", "32", "--format", "json"]) == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"]["fits"] is True
    assert data["profile"]["by_category"]["param"] > 0


def test_estimate_a_user_file(tmp_path, capsys):
    path = write_model(tmp_path)
    code = main(
        [
            "estimate",
            f"{path}:build_model",
            "--input",
            "float32[16,32]",
            "--loss-fn",
            f"{path}:loss",
            "--precision",
            "fp32",
            "--device",
            "t4",
            "--quiet",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("FITS")


def test_budget_verdict(capsys):
    assert (
        main(
            [
                "estimate",
                "gpt2",
                "--batch-size",
                "1",
                "--seq-len",
                "32",
                "--budget",
                "100MiB",
                "--quiet",
            ]
        )
        == 0
    )
    assert "DOES NOT FIT" in capsys.readouterr().out


def test_user_errors_exit_2_with_the_fix(tmp_path, capsys):
    assert main(["estimate", "gpt2", "--device", "h300"]) == 2
    assert "known devices" in capsys.readouterr().err
    path = write_model(tmp_path)
    assert main(["estimate", f"{path}:nope", "--input", "float32[2,32]"]) == 2
    assert "has no function 'nope'" in capsys.readouterr().err
    assert main(["estimate", f"{path}:build_model", "--input", "float32(2,32)"]) == 2
    assert "malformed" in capsys.readouterr().err


def test_file_model_needs_inputs(tmp_path, capsys):
    path = write_model(tmp_path)
    assert main(["estimate", f"{path}:build_model"]) == 2
    assert "--input" in capsys.readouterr().err


def test_devices_and_zoo(capsys):
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    for name in ("h100-80gb", "h200", "a100-40gb", "l40s", "l4", "rtx4090", "t4", "v100-32gb"):
        assert name in out
    assert main(["zoo", "--format", "json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)}
    assert {"gpt2", "gpt2-medium", "llama-1b", "resnet50", "vit-b16", "bert-base"} <= names


def test_quiet_on_every_command(capsys):
    from memfit import zoo

    assert main(["devices", "--quiet"]) == 0
    assert capsys.readouterr().out.split() == [
        "h100-80gb",
        "h200",
        "a100-80gb",
        "a100-40gb",
        "l40s",
        "l4",
        "rtx4090",
        "rtx3090",
        "t4",
        "v100-32gb",
    ]
    assert main(["zoo", "-q"]) == 0
    assert capsys.readouterr().out.split() == zoo.names()
    assert main(["estimate", "gpt2", "--batch-size", "1", "--seq-len", "32", "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("FITS") and len(out.splitlines()) == 1  # the verdict line only
    assert main(["calibrate", "--quiet"]) == 2  # no GPU here: the error still speaks
    assert "torch sees none" in capsys.readouterr().err


SELECTING_MODEL = """
import torch
from torch import nn

class Selects(nn.Linear):
    def forward(self, x):
        y = super().forward(x)
        return y[y > 0].sum()  # its size depends on values

def build_model():
    return Selects(32, 32)
"""


def test_estimate_prints_what_it_assumed_and_the_software(tmp_path, capsys):
    path = tmp_path / "selects.py"
    path.write_text(SELECTING_MODEL)
    code = main(
        ["estimate", f"{path}:build_model", "--input", "float32[16,32]", "--precision", "fp32"]
        + ["--torch-version", "2.6", "--no-cache"]
    )
    assert code == 0
    out = capsys.readouterr().out
    # every element of y (16 x 32 float32) assumed selected, named with its bytes
    assert "warning: aten.index.Tensor: its output size depends on tensor values" in out
    assert "(1 call, 2.00 KiB of results assumed)" in out
    assert "software        traced with torch" in out and "target torch 2.6 + cuDNN 9.1" in out


def test_an_unknown_torch_release_is_a_usage_error(capsys):
    assert main(["estimate", "gpt2", "--torch-version", "2.5", "--no-cache"]) == 2
    err = capsys.readouterr().err
    assert "torch version '2.5'" in err and "2.6" in err
