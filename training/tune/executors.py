"""Where trials run: local worker processes (default, one per core) or tasks on a Ray cluster.

Both hand back concurrent.futures.Future objects whose result is a TrialOutcome as JSON text, so
the coordinator waits on them the same way. Workers never touch the tune's SQLite file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from bnserve.training.tune._ray_compat import disable_cluster_address_rewrite, reread_auth_mode
from bnserve.training.tune.errors import TrialCrashed, TuneSettingsError, WorkerLost
from bnserve.training.tune.trials import run_trial_json

# One BLAS thread per worker: K workers on K cores, not K × cores threads fighting.
_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PARENT_POLL_SECONDS = 0.5
_STOP_GRACE_SECONDS = 10.0  # an idle worker told to stop leaves at once; this is the backstop
# Pipe messages (bytes, never pickle): coordinator -> worker a request's JSON, or _STOP;
# worker -> coordinator _OK + the outcome's JSON, or _CRASHED + a one-line account.
_STOP = b""
_OK = b"ok:"
_CRASHED = b"crashed:"
_BLAS_LIMITED = False  # set once per worker process by run_single_threaded


class Executor(Protocol):
    slots: int  # trials it runs at once

    def submit(self, request_json: str) -> Future[str]: ...

    def close(self, *, wait: bool = True) -> None: ...


def _init_worker(parent_pid: int) -> None:
    """Runs first in each local worker process."""
    for name in _SINGLE_THREAD_ENV:  # for BLAS libraries loaded from now on
        os.environ.setdefault(name, "1")
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def run_single_threaded(request_json: str) -> str:
    """Run a trial with one BLAS thread in this process. The environment set by _init_worker
    covers BLAS loaded later; numpy already loaded (e.g. by a main module that the spawned
    worker re-imported) gets its thread pool limited here, once."""
    global _BLAS_LIMITED
    if not _BLAS_LIMITED and "numpy" in sys.modules:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)
        _BLAS_LIMITED = True
    return run_trial_json(request_json)


def _exit_with_parent(parent_pid: int) -> None:
    """A coordinator killed with SIGKILL cannot stop its workers; they notice and leave."""
    gone = threading.Event()
    while not gone.wait(_PARENT_POLL_SECONDS):
        if os.getppid() != parent_pid:
            os._exit(1)


@dataclass
class _Worker:
    """One local worker process and the parent's end of its private pipe."""

    process: BaseProcess
    connection: Connection
    future: Future[str] | None = None  # the trial it is running, if any


def _worker_main(connection: Connection, parent_pid: int) -> None:
    """A local worker: run requests from the pipe until the coordinator says stop or is gone.

    Ctrl-C goes to the whole process group; the coordinator decides what happens to workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(parent_pid)
    while True:
        try:
            message = connection.recv_bytes()
        except (EOFError, OSError):  # the coordinator is gone
            return
        if message == _STOP:
            return
        try:
            reply = _OK + run_single_threaded(message.decode()).encode()
        except BaseException as error:  # reported to the coordinator, not lost
            reply = _CRASHED + f"{type(error).__name__}: {error}".encode()
        connection.send_bytes(reply)


class LocalExecutor:
    """`workers` spawned processes, each with its own pipe (spawn: safe with threads).

    One dispatcher thread hands requests to idle workers and turns replies into futures. A worker
    that dies fails only the trial it was running, with WorkerLost, and is replaced on demand; no
    lock or queue is shared between workers, so a kill -9 cannot wedge the others or shutdown.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise TuneSettingsError(f"--workers {workers}: need at least 1 worker")
        self.slots = workers
        self._context = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # guards _queue, the flags and the wakeup pipe
        self._queue: deque[tuple[str, Future[str]]] = deque()
        self._closing = False
        self._abandon = False
        self._stopped = False  # the dispatcher has ended and closed the wakeup pipe
        self._failure: str | None = None  # why the dispatcher ended early, if it did
        self._workers: list[_Worker] = []  # touched by the dispatcher thread only
        self._names = itertools.count()
        self._wakeup_reader, self._wakeup_writer = self._context.Pipe(duplex=False)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="bnserve-tune-dispatcher", daemon=True
        )
        self._dispatcher.start()

    def submit(self, request_json: str) -> Future[str]:
        future: Future[str] = Future()
        with self._lock:
            if self._failure is not None:
                raise RuntimeError(f"local workers unusable: {self._failure}")
            if self._closing:
                raise RuntimeError("the executor is closed")
            self._queue.append((request_json, future))
            self._wake()
        return future

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers: after their running trials (wait) or now (an interrupted tune)."""
        with self._lock:
            self._closing = True
            self._abandon = self._abandon or not wait
            self._wake()
        self._dispatcher.join()  # it reaps every worker before it ends

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for operators and tests)."""
        return [worker.process.pid for worker in list(self._workers) if worker.process.pid]

    def _wake(self) -> None:
        if not self._stopped:  # caller holds _lock
            self._wakeup_writer.send_bytes(b"!")

    def _dispatch(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as error:  # e.g. no process can be started: fail, never hang
            with self._lock:
                self._failure = f"{type(error).__name__}: {error}"
                self._fail_all(TrialCrashed(self._failure))  # the runner reports it
        finally:
            self._stop_workers()
            with self._lock:
                self._closing = self._stopped = True
                self._wakeup_reader.close()
                self._wakeup_writer.close()

    def _step(self) -> bool:
        """Hand out work, wait for one event, handle it. False once the executor is done."""
        with self._lock:
            if self._abandon:
                self._fail_all(WorkerLost("the tune was interrupted"))
                return False
            self._assign_queued()
            busy = any(worker.future is not None for worker in self._workers)
            if self._closing and not self._queue and not busy:
                return False
        watched: list[Any] = [self._wakeup_reader]
        for worker in self._workers:
            watched += [worker.connection, worker.process.sentinel]
        ready = set(multiprocessing.connection.wait(watched))
        while self._wakeup_reader.poll():
            self._wakeup_reader.recv_bytes()
        for worker in list(self._workers):
            if worker.connection in ready or worker.process.sentinel in ready:
                self._collect(worker)
        return True

    def _assign_queued(self) -> None:
        """Give queued requests to idle workers, starting workers up to `slots` (holds _lock)."""
        while self._queue:
            idle = next((worker for worker in self._workers if worker.future is None), None)
            if idle is None:
                if len(self._workers) >= self.slots:
                    return
                idle = self._start_worker()
            request_json, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            idle.future = future
            # If it died just now, its sentinel fires and _collect reports the trial lost.
            with contextlib.suppress(OSError):
                idle.connection.send_bytes(request_json.encode())

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(child_end, os.getpid()),
            name=f"bnserve-tune-worker-{next(self._names)}",
            daemon=True,
        )
        process.start()
        child_end.close()  # the child has its own copy; EOF reaches us when it exits
        worker = _Worker(process, parent_end)
        self._workers.append(worker)
        return worker

    def _collect(self, worker: _Worker) -> None:
        """Take a worker's reply, or notice that it died (failing its trial with WorkerLost)."""
        try:
            if worker.connection.poll():
                reply = worker.connection.recv_bytes()
                future, worker.future = worker.future, None
                if future is not None:
                    if reply.startswith(_OK):
                        future.set_result(reply[len(_OK) :].decode())
                    else:
                        future.set_exception(TrialCrashed(reply[len(_CRASHED) :].decode()))
                return
        except (EOFError, OSError):
            pass  # the other end closed: the process ended
        worker.process.join()
        worker.connection.close()
        self._workers.remove(worker)
        if worker.future is not None:
            worker.future.set_exception(
                WorkerLost(
                    f"worker process {worker.process.pid} ended "
                    f"(exit code {worker.process.exitcode}) while running this trial"
                )
            )

    def _fail_all(self, error: BaseException) -> None:
        """Fail every queued and running trial; the workers are stopped next (holds _lock)."""
        for _, future in self._queue:
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
        self._queue.clear()
        for worker in self._workers:
            if worker.future is not None and not worker.future.done():
                worker.future.set_exception(error)

    def _stop_workers(self) -> None:
        """Ask idle workers to leave, terminate busy ones, and reap every one of them."""
        for worker in self._workers:
            if worker.future is None:
                with contextlib.suppress(OSError):  # already gone: reaped below
                    worker.connection.send_bytes(_STOP)
            else:
                worker.process.terminate()
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.connection.close()
        self._workers.clear()


class RayExecutor:
    """Trials as Ray tasks (one CPU each) on the cluster at `address` ("local" starts one here).

    On a multi-node cluster the tune directory must be on storage every node sees, and every
    node needs bnserve installed with the `train` extra.
    """

    def __init__(self, address: str, workers: int | None) -> None:
        if workers is not None and workers < 1:
            raise TuneSettingsError(f"--workers {workers}: need at least 1 worker")
        check_ray_address(address)
        if _is_loopback(address):
            _keep_ray_on_loopback()
        try:
            import ray
        except ModuleNotFoundError:
            raise TuneSettingsError("--ray-address needs Ray: pip install 'bnserve[ray]'") from None
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            _init_ray(ray, address, workers)
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = workers or cluster_cpus
        self._remote = ray.remote(num_cpus=1, max_retries=0)(run_single_threaded)

    def submit(self, request_json: str) -> Future[str]:
        return self._remote.remote(request_json).future()

    def close(self, *, wait: bool = True) -> None:
        if self._owns_ray:
            self._ray.shutdown()


def _init_ray(ray: Any, address: str, workers: int | None) -> None:
    env = {name: "1" for name in _SINGLE_THREAD_ENV}
    with_token = False
    try:
        if address == "local":
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": env},
            )
        else:
            with_token = use_cluster_token()
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError) as error:
        hint = (
            "the cluster refused its token"
            if with_token
            else "no Ray token was given, and a cluster with token authentication (Ray ≥ 2.59's "
            "default) refuses a client without one"
        )
        raise TuneSettingsError(
            f"--ray-address {address}: cannot connect to Ray ({error}); {hint}: give the head's "
            f"token in RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in "
            f"{RAY_DEFAULT_TOKEN_FILE} (`ray get-auth-token` on the head prints it)"
        ) from None


def _is_loopback(address: str) -> bool:
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _keep_ray_on_loopback() -> None:
    """Ray rewrites 127.0.0.1 in an address to this machine's routable address, unless its
    single-machine mode is on (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as on the head kept on
    loopback); a loopback address must stay one. Ray reads the variable when imported, and
    ray_constants.ENABLE_RAY_CLUSTER when it resolves addresses."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        disable_cluster_address_rewrite()  # training/tune/_ray_compat.py


RAY_DEFAULT_TOKEN_FILE = "~/.ray/auth_token"  # where `ray get-auth-token --generate` writes it


def use_cluster_token() -> bool:
    """Send Ray's token to an explicit cluster address as Ray's own CLI does.

    ray.init(address=HOST:PORT) turns token authentication on only when RAY_AUTH_MODE=token is
    set (it auto-enables it for a cluster it finds by itself, never for a given address), so a
    head started with authentication refuses it ("Authentication token is missing"). With
    RAY_AUTH_MODE unset and a token available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, or the
    default file), turn it on; an explicit RAY_AUTH_MODE is respected. True when on.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    default = os.path.expanduser(RAY_DEFAULT_TOKEN_FILE)
    if not (os.environ.get("RAY_AUTH_TOKEN") or path or os.path.isfile(default)):
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    reread_auth_mode()  # Ray caches its config at import (training/tune/_ray_compat.py)
    return True


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast on an address nothing listens at, before Ray's own long retries."""
    if address in ("local", "auto"):
        return
    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TuneSettingsError(
            f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise TuneSettingsError(
            f"--ray-address {address}: unreachable ({error.strerror or error}); "
            "is the Ray head running (ray start --head)?"
        ) from None


def make_executor(workers: int | None, ray_address: str | None) -> Executor:
    """Local processes, or Ray when an address is given (validated before any trial).

    workers None: as many as the Ray cluster has CPUs (a local pool needs a count)."""
    if ray_address:
        return RayExecutor(ray_address, workers)
    if workers is None:
        raise TuneSettingsError("local trials need a worker count (--workers)")
    return LocalExecutor(workers)
