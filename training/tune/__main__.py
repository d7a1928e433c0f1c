"""`python -m training.tune` is `bnserve tune`."""

import sys

from training.tune.cli import main

sys.exit(main(sys.argv[1:]))
