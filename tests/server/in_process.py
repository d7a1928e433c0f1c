"""An in-process Server on free loopback ports (imported by conftest.py and the tests that
start servers of their own: `from in_process import start_server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server_process import free_port

from server.app import Server
from server.settings import ServerSettings


def start_server(
    settings: ServerSettings,
    models: dict[str, Path] | None = None,
    *,
    http: bool = False,
    **create: Any,
) -> Server:
    """A real Server on a free loopback port with the given name → path models loaded; with
    http, the HTTP/REST transport too on another free port (`server.http_port`); `create`
    goes to Server.create (interceptors, tracing, …)."""
    http_port = free_port() if http else 0
    server = Server.create(
        settings.replace(host="127.0.0.1", port=0, http_port=http_port), **create
    )
    server.start()
    for name, path in (models or {}).items():
        server.load_model(path, name, "1")
    return server
