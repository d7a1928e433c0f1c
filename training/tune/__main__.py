"""`python -m bnserve.training.tune` is `bnserve tune`."""

import sys

from bnserve.training.tune.cli import main

sys.exit(main(sys.argv[1:]))
