from __future__ import annotations

import pytest

from .files import write_all


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """The prepared files of the malformed-input cases, and the modules the command line imports
    when it runs, imported once (the cases time what a mistake costs, not first imports)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import memfit.plan.search  # noqa: F401
    import memfit.report.build  # noqa: F401
    import memfit.trace.estimate  # noqa: F401

    FakeTensorMode()  # imports torch._dynamo, seconds on a busy 2-core machine
    return write_all(tmp_path_factory.mktemp("malformed"))
