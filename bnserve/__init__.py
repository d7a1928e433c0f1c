"""bnserve: train a batch-normalized MLP in numpy, fold it into ONNX, serve it.

The one name bnserve installs. `bnserve.training`, `bnserve.export` and `bnserve.server` are the
repository's `training/`, `export/` and `server/` folders (symlinks here, real packages in the
installed wheel); `bnserve.cli` is the `bnserve` command.
"""
