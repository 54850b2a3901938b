import os

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
