"""`python -m export RUN_DIR --out model.onnx`: the same as `bnserve export`."""

import sys

from export.cli import main

sys.exit(main(sys.argv[1:]))
