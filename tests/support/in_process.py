"""An in-process Server on free loopback ports (imported by conftest.py and the tests that
start servers of their own: `from in_process import start_server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnserve.server.app import Extras, Server
from bnserve.server.models.repository import READY
from bnserve.server.models.versions import resolve_sources
from bnserve.server.settings import ServerSettings
from tests.support.server_process import free_port


def start_server(
    settings: ServerSettings,
    models: dict[str, Path] | None = None,
    *,
    http: bool = False,
    **create: Any,
) -> Server:
    """A real Server on a free loopback port serving each name → model file as version "1" of
    that name, each resolved as `--model FILE --name NAME` resolves it and loaded by the
    server's own version scan at start (a refused file is left failed, as the CLI leaves it);
    with http, the HTTP/REST transport too on another free port (`server.http_port`); `create`
    names the server's Extras (interceptors, metrics, observer, …)."""
    http_port = free_port() if http else 0
    sources = None  # without models: what settings.model and model_root configure
    if models:
        sources = [
            source
            for name, path in models.items()
            for source in resolve_sources([str(path)], name, "1", "")
        ]
    server = Server.create(
        settings.replace(host="127.0.0.1", port=0, http_port=http_port),
        Extras(**create),
        sources=sources,
    )
    server.start()
    return server


def is_serving(server: Server, name: str) -> bool:
    """True when the server's version scan loaded model `name` (version "1") and serves it."""
    return server.repository.status(name, "1").state == READY
