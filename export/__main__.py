"""`python -m bnserve.export RUN_DIR --out model.onnx`: the same as `bnserve export`;
`python -m bnserve.export import MODEL.onnx --out folded.onnx`: the same as `bnserve import`."""

import sys

from bnserve.export import cli, import_cli

if sys.argv[1:2] == ["import"]:
    sys.exit(import_cli.main(sys.argv[2:]))
sys.exit(cli.main(sys.argv[1:]))
