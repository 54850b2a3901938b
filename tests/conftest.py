import functools
import os
import subprocess
import sys

import pytest
import torch

pytest_plugins = ["tests.snapshot_fixtures"]  # make_snapshot, make_profile

# the command line's answer cache stays out of the tests (tests/test_result_cache.py turns it on)
os.environ["MEMFIT_NO_CACHE"] = "1"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# CUDA autocast and SDPA on fake CUDA tensors, run as on a GPU: what memfit's CPU emulation is
# checked against. torch 2.6's CUDA kernels query the driver even on fake tensors and abort the
# process without a GPU, so a child process tries first.
_FAKE_CUDA_PROBE = """
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
with FakeTensorMode(allow_non_fake_inputs=True):
    x = torch.randn(4, 8, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=False):
        torch.set_autocast_enabled("cuda", True)
        torch.set_autocast_dtype("cuda", torch.bfloat16)
        torch.autocast_increment_nesting()
        torch.nn.functional.linear(x, x)
        torch.nn.functional.dropout(x, 0.1, True)
"""


@functools.cache
def _fake_cuda_runs() -> bool:
    if torch.version.cuda is None:
        return False
    if torch.cuda.is_available():
        return True
    probe = subprocess.run([sys.executable, "-c", _FAKE_CUDA_PROBE], capture_output=True)
    return probe.returncode == 0


@pytest.fixture
def fake_cuda_oracle():
    """Skips the test unless this torch runs CUDA kernels' dispatch on fake CUDA tensors."""
    if not _fake_cuda_runs():
        pytest.skip("this torch cannot run CUDA autocast on fake CUDA tensors without a GPU")
