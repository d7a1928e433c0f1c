"""The one `bnserve` command: dispatches to the training, export and server packages.

Each subcommand imports its package lazily, so `bnserve serve` works in the serving image, which
carries no training code.
"""

from __future__ import annotations

import importlib
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
    "serve": ("bnserve.server.cli", "main", "serve an ONNX model over gRPC"),
    "predict": (
        "bnserve.server.clients.predict",
        "main",
        "score examples against a running server",
    ),
    "drift": (
        "bnserve.server.drift.cli",
        "main",
        "compare inputs with a model's training distribution",
    ),
}


def _usage() -> str:
    lines = ["usage: bnserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_text}" for name, (_, _, help_text) in SUBCOMMANDS.items()]
    lines += ["", "Run `bnserve COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in SUBCOMMANDS:
        print(f"bnserve: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
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
    return int(getattr(module, function_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
