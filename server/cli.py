"""`bnserve serve` / `python -m server`: run the gRPC server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from server.settings import ENV_PREFIX, ServerSettings, settable_fields

log = logging.getLogger("server")


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field (--max-inflight sets max_inflight); unset flags keep env."""
    parser = argparse.ArgumentParser(
        prog="bnserve serve",
        description="Serve an exported bnserve model over gRPC: the native bnserve.v1 API, the "
        "Open Inference Protocol (KServe v2), health and reflection. Every flag can also be set "
        f"by environment variable {ENV_PREFIX}<FIELD> (e.g. {ENV_PREFIX}PORT); flags win.",
    )
    for setting in settable_fields():
        flag = "--" + setting.name.replace("_", "-")
        kind = setting.type if isinstance(setting.type, str) else setting.type.__name__
        help_text = f"{setting.metadata['help']} (default: {setting.default!r})"
        if kind == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(
                flag, type={"int": int, "float": float}.get(kind, str), default=None, help=help_text
            )
    return parser


def settings_from_args(argv: list[str]) -> ServerSettings:
    """Parse flags over env over defaults; raises ValueError for bad values."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {
        name: value for name, value in vars(args).items() if value is not None
    }
    return ServerSettings.load(overrides)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"bnserve serve: {error}", file=sys.stderr)
        return 2
    if not settings.model:
        print(f"bnserve serve: --model PATH is required (or {ENV_PREFIX}MODEL)", file=sys.stderr)
        return 2
    if not Path(settings.model).is_file():
        print(f"bnserve serve: model file {settings.model} does not exist", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info("%s", settings.summary())

    from server.app import Server  # after logging is set up: grpc and onnxruntime log at import

    try:
        server = Server.create(settings)
    except OSError as error:
        print(f"bnserve serve: {error}", file=sys.stderr)
        return 1
    stop_requested = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    server.start()
    state = "ready" if server.repository.ready else "NOT ready (see the errors above)"
    log.info("serving on port %d, %s; Ctrl-C or SIGTERM stops", server.port, state)
    stop_requested.wait()
    log.info("stopping: in-flight calls get %.1f s", settings.grace_s)
    server.stop()
    return 0
