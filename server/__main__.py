"""`python -m server ARGS` is `bnserve serve ARGS`."""

import sys

from server.cli import main

sys.exit(main())
