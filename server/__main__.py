"""`python -m bnserve.server ARGS` is `bnserve serve ARGS`."""

import sys

from bnserve.server.cli import main

sys.exit(main())
