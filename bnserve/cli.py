"""The one `bnserve` command: dispatches to the training, export and server packages.

Each subcommand imports its package lazily, so `bnserve serve` works in the serving image, which
carries no training code.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys

# subcommand -> (module, function, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("bnserve.training.cli", "main", "train an MLP with batch norm into a run directory"),
    "tune": ("bnserve.training.tune.cli", "main", "random search over hyperparameters"),
    "export": ("bnserve.export.cli", "main", "fold batch norm and write model.onnx"),
    "import": (
        "bnserve.export.import_cli",
        "main",
        "fold and wrap a BN MLP trained elsewhere (ONNX)",
    ),
    "serve": ("bnserve.server.cli", "main", "serve an ONNX model over gRPC, HTTP/REST and metrics"),
    "predict": (
        "bnserve.server.clients.predict",
        "main",
        "score examples against a running server",
    ),
    "adapt": (
        "bnserve.export.adapt_cli",
        "main",
        "re-estimate batch-norm statistics on recent inputs",
    ),
    "drift": (
        "bnserve.server.drift.cli",
        "main",
        "compare inputs with a model's training distribution",
    ),
}


def _usage() -> str:
    lines = ["usage: bnserve COMMAND [ARGS...] | bnserve help COMMAND | bnserve --version", ""]
    lines += ["commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, _, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `bnserve help COMMAND` (or `bnserve COMMAND --help`) for its options."]
    return "\n".join(lines)


def installed_version() -> str:
    """The installed distribution's version (pyproject's, as pip recorded it)."""
    from bnserve.server.version import installed_version as version

    return version()


def _unknown(command: str) -> int:
    close = difflib.get_close_matches(command, SUBCOMMANDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    print(f"bnserve: error: unknown command {command!r}{hint}\n\n{_usage()}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Dispatch `bnserve COMMAND ARGS`; a bare `bnserve` prints the usage and exits 2."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"bnserve {installed_version()}")
        return 0
    if args[0] == "help":
        if len(args) == 1:
            print(_usage())
            return 0
        if args[1] not in SUBCOMMANDS:
            return _unknown(args[1])
        args = [args[1], "--help"]
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        return _unknown(command)
    module_name, function_name, _ = SUBCOMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        print(
            f"bnserve {command}: error: needs {error.name!r}, which is not installed here "
            f"(install the extra: pip install 'bnserve[train]')",
            file=sys.stderr,
        )
        return 2
    try:
        return int(getattr(module, function_name)(rest) or 0)
    except BrokenPipeError:
        return _reader_gone()


BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell shows for a program a closed pipe stopped


def _reader_gone() -> int:
    """stdout's reader went away (`bnserve export … | head -1`): stop quietly, as a program
    SIGPIPE stops; stdout goes to /dev/null so that the interpreter's last flush is silent."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
