"""``python -m memfit.cli``: the command line."""

import sys

from memfit.cli import main

sys.exit(main())
