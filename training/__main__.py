"""`python -m bnserve.training` is `bnserve train`."""

import sys

from bnserve.training.cli import main

sys.exit(main(sys.argv[1:]))
