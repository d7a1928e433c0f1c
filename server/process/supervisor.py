"""`--processes N`: N serving processes on one port, under a supervisor that restarts them.

The supervisor imports neither grpc nor onnxruntime. It
- reserves every port a child listens on (gRPC's, and HTTP's unless --http-port 0; metrics are
  served by the supervisor itself): binds (never listens on) a socket with SO_REUSEPORT, so its
  children can bind the same port (port 0 is resolved here and passed on), while any server
  that does not set SO_REUSEPORT (a second `bnserve serve`) fails to bind, as with one
  process; and it holds an abstract unix socket named after the port, so a second supervisor
  fails too (docs/serving.md says why not one socket handed down);
- starts N `python -m bnserve.server` children with the same flags plus `--port P --http-port H
  --cpu-affinity CORES` (server/process/placement.py); each loads, checks (parity gate) and
  serves the model itself, with its own onnxruntime session, and says over a pipe when it is
  up and whether it is ready;
- forwards SIGTERM/SIGINT (drain and stop, as one process does) and SIGHUP (reload) to every
  child; restarts a child that dies, with backoff, and logs it;
- serves /metrics summed over the children (prometheus-client multiprocess mode, in a private
  temporary directory).
A child watches a lifeline pipe: when the supervisor dies, even by SIGKILL, its children stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bnserve.server.models.versions import resolve_sources
from bnserve.server.observability.metrics_http import MetricsHTTPServer, serve_metrics
from bnserve.server.process.placement import Placement
from bnserve.server.settings import ServerSettings

if TYPE_CHECKING:
    from bnserve.server.process.signals import SignalFlags

log = logging.getLogger("bnserve.server.process.supervisor")

WORKER_ENV = "_BNSERVE_WORKER"  # "INDEX,LIFELINE_FD,STATUS_FD" in a supervised child
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's multiprocess mode switch
POLL_S = 0.1  # how often the supervisor looks at its children between signals
RESTART_BACKOFF_S = (0.5, 30.0)  # first and longest wait before restarting a child that died
STABLE_S = 30.0  # a child that lived this long is restarted after the first backoff again
NO_MODEL = "no-model"  # a child's report when none of its models loaded (it exits 2 then)
REPORT_BYTES = 4096  # a child's report is one write of at most PIPE_BUF bytes
KILL_AFTER_S = 30.0  # after drain_s + grace_s, children still running on shutdown are killed


@dataclass(frozen=True)
class WorkerLink:
    """A supervised child's end of its pipes to the supervisor."""

    index: int
    lifeline_fd: int  # EOF when the supervisor is gone
    status_fd: int  # the child writes "ready\n", "unready\n" or a NO_MODEL report, once

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WorkerLink | None:
        """The link a supervisor passed down, or None in a process nobody supervises."""
        raw = environ.get(WORKER_ENV)
        if not raw:
            return None
        index, lifeline_fd, status_fd = (int(part) for part in raw.split(","))
        return cls(index, lifeline_fd, status_fd)

    def watch_supervisor(self) -> None:
        """Send this process SIGTERM (drain and stop) when the supervisor goes away."""

        def watch() -> None:
            with contextlib.suppress(OSError):
                while os.read(self.lifeline_fd, 1):
                    pass
            log.error("process %d: the supervisor is gone; stopping", self.index)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=watch, name="lifeline", daemon=True).start()

    def report(self, ready: bool) -> None:
        """Tell the supervisor this process answers calls, and whether its models are ready."""
        self._write(b"ready\n" if ready else b"unready\n")

    def report_no_model(self, message: str) -> None:
        """Tell the supervisor no model loaded (message: why); the process then exits 2."""
        self._write(f"{NO_MODEL}\t{message}"[: REPORT_BYTES - 1].encode(errors="replace") + b"\n")

    def _write(self, report: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.status_fd, report)  # ≤ PIPE_BUF bytes: one atomic write
            os.close(self.status_fd)


@dataclass
class _Child:
    index: int
    process: subprocess.Popen[bytes]
    status_fd: int  # read end; -1 once the child has reported (or died)
    started_at: float
    reported: str = ""  # "ready" / "unready" / NO_MODEL once reported
    no_model: str = ""  # why no model loaded, when it reported NO_MODEL


class PortReservation:
    """Sockets bound (not listening) with SO_REUSEPORT on host:port for every address host
    resolves to, plus an abstract unix socket naming the port so a second supervisor fails.
    One per port a child listens on (gRPC's, HTTP's); flag names the port in errors."""

    def __init__(self, host: str, port: int, flag: str = "--port") -> None:
        self.sockets: list[socket.socket] = []
        try:
            infos = socket.getaddrinfo(
                host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as error:
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        self.port = port
        try:
            for family, kind, proto, _, address in infos:
                reserved = socket.socket(family, kind, proto)
                self.sockets.append(reserved)
                reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                reserved.bind((address[0], self.port, *address[2:]))
                self.port = reserved.getsockname()[1]
            self._lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._lock.bind(f"\0bnserve-port-{self.port}")
        except OSError as error:
            self.close()
            raise OSError(
                f"cannot listen on {host}:{port} (in use, or not a local address?): "
                f"{error.strerror}; pick another {flag}"
            ) from None

    def close(self) -> None:
        for reserved in self.sockets:
            reserved.close()
        if hasattr(self, "_lock"):
            self._lock.close()


class Supervisor:
    """Runs `count` serving processes with the flags in argv until a stop signal."""

    def __init__(
        self, settings: ServerSettings, argv: Sequence[str], count: int, placement: Placement
    ) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.count = count
        self.placement = placement  # child i's cores, passed down as --cpu-affinity
        self.children: dict[int, _Child] = {}  # index → the running child
        self._restart_at: dict[int, float] = {}  # index → when to start it again
        self._failures: dict[int, int] = {}  # index → deaths in a row without living STABLE_S
        self._stopping = False
        self._announced = False

    def run(self, signals: SignalFlags) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code (a child's start-up failure's code)."""
        settings = self.settings
        try:  # bad model paths, TLS or token files are reported once, here, not by every child
            resolve_sources(
                settings.model, settings.name, settings.model_version, settings.model_root
            )
            from bnserve.server.operations import Operations  # grpc: harmless, children are spawned

            Operations.from_settings(settings, os.environ)
        except ValueError as error:
            print(f"bnserve serve: error: {error}", file=sys.stderr)
            return 2
        reservations: list[PortReservation] = []
        try:  # every port a child listens on: gRPC, and HTTP unless it is off
            reservations.append(PortReservation(self.settings.host, self.settings.port))
            if self.settings.http_port:
                reservations.append(
                    PortReservation(self.settings.host, self.settings.http_port, "--http-port")
                )
        except OSError as error:
            for reservation in reservations:
                reservation.close()
            print(f"bnserve serve: error: {error}", file=sys.stderr)
            return 2
        self.port = reservations[0].port
        self.http_port = reservations[1].port if len(reservations) > 1 else 0
        for note in self.placement.notes:
            log.info("%s", note)
        for warning in self.placement.warnings:
            log.warning("%s", warning)
        self._metrics_dir = (
            tempfile.mkdtemp(prefix="bnserve-metrics-") if self.settings.metrics_port else ""
        )
        self._lifeline_read, self._lifeline_write = os.pipe()
        metrics_http = None
        try:
            if self._metrics_dir:
                metrics_http = _serve_summed_metrics(self._metrics_dir, self.settings)
                log.info(
                    "metrics of every process on http://%s:%d/metrics, summed from files in %s",
                    self.settings.host,
                    metrics_http.server_address[1],
                    self._metrics_dir,
                )
            log.info(
                "supervisor pid %d: starting %d serving processes on port %d%s",
                os.getpid(),
                self.count,
                self.port,
                f", HTTP/REST on port {self.http_port}" if self.http_port else "",
            )
            for index in range(self.count):
                self._start(index)
            return self._loop(signals)
        except OSError as error:
            print(f"bnserve serve: error: {error}", file=sys.stderr)
            self._stop_all()
            return 2
        finally:
            if metrics_http is not None:
                metrics_http.shutdown()
                metrics_http.server_close()
            os.close(self._lifeline_write)
            os.close(self._lifeline_read)
            for reservation in reservations:
                reservation.close()
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _loop(self, signals: SignalFlags) -> int:
        stop_deadline = None
        stops_seen = 0
        while True:
            stops, reload = signals.poll(POLL_S)
            if stops > stops_seen:
                stops_seen = stops
                if not self._stopping:
                    self._stopping = True
                    stop_deadline = time.monotonic() + (
                        self.settings.drain_s + self.settings.grace_s + KILL_AFTER_S
                    )
                    log.info("stopping %d processes", len(self.children))
                self._signal_all(signal.SIGTERM)  # a second stop signal cuts draining short
            if reload and not self._stopping:
                log.info("SIGHUP passed on to %d processes", len(self.children))
                self._signal_all(signal.SIGHUP)
            self._read_reports()
            failed = self._reap()
            if failed is not None:
                return failed
            if self._stopping:
                if not self.children:
                    log.info("all processes stopped")
                    return 0
                if stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.error("processes still running; killing them")
                    self._signal_all(signal.SIGKILL)
                    stop_deadline = None
                continue
            now = time.monotonic()
            for index, due in list(self._restart_at.items()):
                if now >= due:
                    del self._restart_at[index]
                    self._start(index)

    def _start(self, index: int) -> None:
        status_read, status_write = os.pipe()
        env = {**os.environ, WORKER_ENV: f"{index},{self._lifeline_read},{status_write}"}
        for name in (MULTIPROC_ENV, MULTIPROC_ENV.lower()):  # never another program's directory
            env.pop(name, None)
        if self._metrics_dir:
            env[MULTIPROC_ENV] = self._metrics_dir
        try:
            process = subprocess.Popen(
                [
                    *[sys.executable, "-m", "bnserve.server", *self.argv],
                    *["--port", str(self.port), "--http-port", str(self.http_port)],
                    *["--cpu-affinity", self.placement.flag(index)],
                ],
                env=env,
                pass_fds=(self._lifeline_read, status_write),
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it passes it on
            )
        finally:
            os.close(status_write)
        self.children[index] = _Child(index, process, status_read, time.monotonic())
        log.info("process %d is pid %d, %s", index, process.pid, self.placement.describe(index))

    def _read_reports(self) -> None:
        for child in self.children.values():
            if child.status_fd < 0:
                continue
            data = b""
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(child.status_fd, False)
                data = os.read(child.status_fd, REPORT_BYTES)
            if not data:
                continue
            child.reported, _, child.no_model = (
                data.decode(errors="replace").strip().partition("\t")
            )
            os.close(child.status_fd)
            child.status_fd = -1
            if self._announced:
                log.info(
                    "process %d restarted as pid %d, %s",
                    child.index,
                    child.process.pid,
                    child.reported,
                )
        children = self.children.values()
        if (
            not self._announced
            and len(children) == self.count
            and all(c.reported for c in children)
            and not any(c.reported == NO_MODEL for c in children)  # _reap ends the start-up
        ):
            self._announced = True
            ready = all(c.reported == "ready" for c in children)
            log.info(
                "%d processes serving on port %d, %s",
                self.count,
                self.port,
                "ready" if ready else "NOT ready (see the errors above)",
            )

    def _reap(self) -> int | None:
        """Forget children that exited and schedule their restart; a child that fails before
        the first start-up completed ends the supervisor with its exit code (bad settings or
        model: restarting would fail the same way)."""
        for index, child in list(self.children.items()):
            code = child.process.poll()
            if code is None:
                continue
            del self.children[index]
            if child.status_fd >= 0:
                os.close(child.status_fd)
            self._forget_metrics(child.process.pid)
            if self._stopping:
                log.info("process %d (pid %d) exited %d", index, child.process.pid, code)
                continue
            how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited {code}"
            if not self._announced and child.reported == NO_MODEL:
                print(f"bnserve serve: error: {child.no_model}", file=sys.stderr)
                self._stop_all()
                return 2
            if not self._announced:
                log.error(
                    "process %d (pid %d) %s during start-up; stopping",
                    index,
                    child.process.pid,
                    how,
                )
                self._stop_all()
                return code if code > 0 else 2
            lived = time.monotonic() - child.started_at
            failures = 0 if lived >= STABLE_S else self._failures.get(index, 0) + 1
            self._failures[index] = failures
            first, longest = RESTART_BACKOFF_S
            wait = 0.0 if failures == 0 else min(longest, first * 2 ** (failures - 1))
            log.error(
                "process %d (pid %d) %s after %.1f s; restarting it in %.1f s",
                index,
                child.process.pid,
                how,
                lived,
                wait,
            )
            self._restart_at[index] = time.monotonic() + wait
        return None

    def _signal_all(self, signal_number: int) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal_number)

    def _stop_all(self) -> None:
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.process.wait(self.settings.grace_s + KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        self.children.clear()

    def _forget_metrics(self, pid: int) -> None:
        if self._metrics_dir:
            from prometheus_client import multiprocess

            from bnserve.server.drift.metrics import child_drift_file

            multiprocess.mark_process_dead(pid, self._metrics_dir)
            child_drift_file(self._metrics_dir, pid).unlink(missing_ok=True)


def _serve_summed_metrics(directory: str, settings: ServerSettings) -> MetricsHTTPServer:
    """/metrics on the settings' host and metrics port (observability/metrics_http.py),
    summing every child's samples in directory; with --capture-dir, the realized quality of
    the store every child writes to, joined here."""
    from prometheus_client import CollectorRegistry, multiprocess

    from bnserve.server.capture.metrics import QualityCollector
    from bnserve.server.capture.quality import QualityJoiner
    from bnserve.server.drift.metrics import ChildDriftCollector

    host, port = settings.host, settings.metrics_port
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    registry.register(ChildDriftCollector(directory))  # drift gauges: multiprocess files lack them
    if settings.capture_dir:
        joiner = QualityJoiner(
            Path(settings.capture_dir), settings.quality_recent_s, settings.feedback_window_s
        )
        registry.register(QualityCollector(joiner))
    try:
        http, _ = serve_metrics(host, port, registry)
    except OSError as error:
        raise OSError(
            f"cannot serve metrics on {host}:{port} ({error.strerror}); pick another "
            "--metrics-port, or 0 to turn metrics off"
        ) from None
    return http


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
