"""`bnserve serve` / `python -m bnserve.server`: run the gRPC server until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from bnserve.flags import add_field_flag, field_types, shown_default
from bnserve.server.grpc.core_logs import relay_core_logs
from bnserve.server.observability.logs import configure_logging
from bnserve.server.process.cores import allowed_cores, cgroup_cpu_quota
from bnserve.server.process.placement import current_core, pin_process, plan_placement
from bnserve.server.process.signals import SignalFlags
from bnserve.server.process.supervisor import MULTIPROC_ENV, Supervisor, WorkerLink
from bnserve.server.settings import ENV_PREFIX, ServerSettings, settable_fields

if TYPE_CHECKING:  # imported when serving starts, after logging is set up
    from bnserve.server.app import Server
    from bnserve.server.drift.metrics import ChildDriftWriter
    from bnserve.server.operations import Operations

log = logging.getLogger("bnserve.server")


def build_parser() -> argparse.ArgumentParser:
    """One flag per settings field (--max-inflight sets max_inflight); unset flags keep env."""
    parser = argparse.ArgumentParser(
        prog="bnserve serve",
        usage="bnserve serve (--model PATH [--model PATH ...] | --model-root DIR) [OPTIONS]",
        description="Serve an exported bnserve model: over gRPC (the native bnserve.v1 API, the "
        "Open Inference Protocol (KServe v2), health and reflection), the Open Inference "
        "Protocol over HTTP/REST (--http-port) and Prometheus metrics (--metrics-port). Every "
        f"flag can also be set by environment variable {ENV_PREFIX}<FIELD> (e.g. "
        f"{ENV_PREFIX}PORT); flags win.",
    )
    kinds = field_types(ServerSettings)
    for setting in settable_fields():
        add_field_flag(
            parser,
            setting,
            kinds[setting.name],
            shown=shown_default(setting.default),
            booleans="pair",  # --health / --no-health
            sequences="repeated",  # --model A --model B
        )
    return parser


def settings_from_args(argv: list[str]) -> ServerSettings:
    """Parse flags over env over defaults; raises ValueError for bad values."""
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in vars(args).items()
        if value is not None
    }
    return ServerSettings.load(overrides)


def main(argv: list[str] | None = None) -> int:
    """Run `bnserve serve ARGS` until stopped: 0 after a clean stop, 2 when it cannot start or
    serve (README: Exit codes)."""
    try:
        settings = settings_from_args(sys.argv[1:] if argv is None else argv)
    except ValueError as error:
        print(f"bnserve serve: error: {error}", file=sys.stderr)
        return 2
    if not settings.model and not settings.model_root:
        print(
            "bnserve serve: error: --model PATH is required (a model file, a model directory or a "
            f"root of them; or --model-root DIR; env {ENV_PREFIX}MODEL / {ENV_PREFIX}MODEL_ROOT)",
            file=sys.stderr,
        )
        return 2
    link = WorkerLink.from_env(os.environ)
    count = 1 if link is not None else settings.process_count()
    try:  # a supervised child is given its cores as a list (or none) by the supervisor
        placement = plan_placement(
            settings.cpu_affinity,
            count,
            allowed_cores(),
            quota=cgroup_cpu_quota(),
            intra_op_threads=settings.intra_op_threads,
            current_core=current_core(),
        )
    except ValueError as error:
        print(f"bnserve serve: error: {error}", file=sys.stderr)
        return 2
    if count > 1:
        # The supervisor's children relay their own grpc core lines; it relays none.
        configure_logging(settings.log_level, settings.log_format)
        supervisor = Supervisor(settings, sys.argv[1:] if argv is None else argv, count, placement)
        return supervisor.run(SignalFlags())
    cores = placement.cores[0]
    if cores is not None:  # before any thread starts: every later thread inherits the pin
        pin_process(cores)
    who = "this process" if link is None else f"process {link.index}"
    placed = [*placement.notes, f"{who} (pid {os.getpid()}): {placement.describe(0)}"]
    with relay_core_logs():  # before logging is set up: it moves Python's stderr
        configure_logging(settings.log_level, settings.log_format)
        return _serve(settings, link, placed)


def _serve(settings: ServerSettings, link: WorkerLink | None, placed: list[str]) -> int:
    """Run the configured server (a supervised process when link is given) until a stop
    signal; the exit code. The settings line and `placed` (where the process runs) come once
    the start-up checks have passed, so a server that cannot start says only why."""
    if link is not None:
        link.watch_supervisor()
    created = _create(settings, link)
    if isinstance(created, int):
        return created
    server, operations, metrics_port = created
    signals = SignalFlags()  # before the models load: a stop signal then still stops cleanly
    server.start(load_before_listening=link is not None)
    if not server.repository.names() and not settings.wait_for_model:
        _report_no_model(server, link)  # as with one process, so with several
        server.stop(0)
        operations.stop()
        return 2
    log.info("%s", settings.summary())
    for line in placed:
        log.info("%s", line)
    drift_writer = _child_drift_writer(server, link)  # before the supervisor hears "ready"
    if link is not None:
        link.report(server.repository.ready)
    _log_serving(server, operations, metrics_port, link)
    _serve_until_stopped(server, operations, signals)
    if drift_writer is not None:
        drift_writer.stop()
    log.info("stopped")
    return 0


def _child_drift_writer(server: Server, link: WorkerLink | None) -> ChildDriftWriter | None:
    """A supervised process with metrics on writes its drift gauges where the supervisor's
    /metrics reads them (server/drift/metrics.py); None otherwise."""
    directory = os.environ.get(MULTIPROC_ENV, "")
    if link is None or not directory or not server.settings.drift:
        return None
    from bnserve.server.drift.metrics import ChildDriftWriter

    writer = ChildDriftWriter(server.repository, directory, link.index)
    writer.start()
    return writer


def _create(
    settings: ServerSettings, link: WorkerLink | None
) -> tuple[Server, Operations, int | None] | int:
    """Build and bind the server and the metrics endpoint: (server, operations, metrics port),
    or exit code 2 after one error line (bad model path, TLS or token file; a port in use)."""
    from bnserve.server.app import (
        Server,  # after logging is set up: grpc and onnxruntime log at import
    )
    from bnserve.server.operations import Operations

    try:
        operations = Operations.from_settings(settings, os.environ)
        server = Server.create(settings, operations.extras(reuse_port=link is not None))
        metrics_port = operations.serve_metrics() if link is None else None
    except (ValueError, OSError) as error:  # bad files, or a port in use
        print(f"bnserve serve: error: {error}", file=sys.stderr)
        return 2
    return server, operations, metrics_port


def _report_no_model(server: Server, link: WorkerLink | None) -> None:
    """Say once why no model could be loaded (a supervised process tells the supervisor)."""
    failures = "; ".join(
        f"{status.name} version {status.version}: {status.error or status.state}"
        for status in server.repository.statuses()
    )
    message = (
        f"no model could be loaded ({failures or 'no model found'}); "
        "fix the model, or pass --wait-for-model to wait for one"
    )
    if link is None:
        print(f"bnserve serve: error: {message}", file=sys.stderr)
    else:  # the supervisor says it once, for every process
        link.report_no_model(message)


def _log_serving(
    server: Server, operations: Operations, metrics_port: int | None, link: WorkerLink | None
) -> None:
    """The start-up lines: the HTTP address, then ports, readiness, TLS, auth and metrics."""
    settings = server.settings
    if server.http_port is not None:
        scheme = "https" if settings.tls_cert else "http"
        log.info(
            "HTTP/REST (Open Inference Protocol) on %s://%s:%d/v2",
            scheme,
            settings.host,
            server.http_port,
        )
    state = "ready" if server.repository.ready else "NOT ready (see the errors above)"
    tls = "TLS" + (" with client certificates" if settings.tls_client_ca else "")
    log.info(
        "serving on port %d, %s (%s%s); metrics %s; SIGHUP rescans models%s; "
        "Ctrl-C or SIGTERM stops",
        server.port,
        state,
        tls if operations.credentials is not None else "plaintext",
        ", bearer tokens required" if operations.token_auth is not None else "",
        f"on http://{settings.host}:{metrics_port}/metrics"
        if metrics_port
        else ("served by the supervisor" if link and operations.metrics else "off"),
        " and re-reads tokens" if operations.token_auth is not None else "",
    )


def _serve_until_stopped(server: Server, operations: Operations, signals: SignalFlags) -> None:
    """Reload on SIGHUP; on a stop signal drain (settings.drain_s), then stop."""
    settings = server.settings
    while signals.wait() == "reload":
        log.info("SIGHUP: rescanning model directories")
        server.request_reload()
        try:
            operations.reload_tokens()
        except ValueError as error:
            log.error("tokens not re-read, the old ones stay accepted: %s", error)
    if settings.drain_s > 0:
        log.info(
            "draining: readiness NOT_SERVING, calls still answered for %.1f s "
            "(signal again to stop now)",
            settings.drain_s,
        )
        server.drain()
        if signals.wait_for_stop(settings.drain_s):
            log.info("second stop signal: draining cut short")
    log.info("stopping: health NOT_SERVING, in-flight calls get %.1f s", settings.grace_s)
    server.stop()
    operations.stop()
