"""`python -m bnserve CMD ARGS` is `bnserve CMD ARGS`."""

import sys

from bnserve.cli import main

sys.exit(main())
