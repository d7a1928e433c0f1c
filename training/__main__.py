"""`python -m training` is `bnserve train`."""

import sys

from training.cli import main

sys.exit(main(sys.argv[1:]))
