"""Estimating a 7B-parameter model allocates no weights: the process stays under 2 GiB."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import json, resource, torch, memfit
from memfit.zoo.llama import Llama, LlamaConfig

def build():  # LLaMA-2 7B's shape
    return Llama(LlamaConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, hidden_dim=11008))

profile = memfit.estimate(build, "input_ids=int64[1,512]<32000 labels=int64[1,512]<32000",
                          device="h100-80gb", precision="bf16-mixed")
params = profile.by_category[memfit.Category.PARAM]
kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({"params": params, "max_rss": kib * 1024}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.slow
def test_7b_estimate_stays_under_2_gib_of_rss() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], check=True, capture_output=True, text=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["params"] > 6.5e9 * 4  # fp32 weights of 6.7B parameters, predicted
    assert result["max_rss"] < 2 * 1024**3
