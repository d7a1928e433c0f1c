"""Where trials run: local worker processes (default, one per core) or tasks on a Ray cluster.

Both hand back concurrent.futures.Future objects whose result is a TrialOutcome as JSON text, so
the coordinator waits on them the same way. Workers never touch the tune's SQLite file.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from training.tune.space import SpaceError
from training.tune.trials import run_trial_json

# One BLAS thread per worker: K workers on K cores, not K × cores threads fighting.
_SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PARENT_POLL_SECONDS = 0.5
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


class LocalExecutor:
    """A pool of `workers` spawned processes (spawn: safe with threads, same on every OS)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise SpaceError(f"--workers {workers}: need at least 1 worker")
        self.slots = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    def submit(self, request_json: str) -> Future[str]:
        try:
            return self._pool.submit(run_single_threaded, request_json)
        except BrokenProcessPool:
            # A worker died (e.g. killed by the OOM killer): its trial failed; start afresh.
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(run_single_threaded, request_json)

    def close(self, *, wait: bool = True) -> None:
        """Stop the workers: after their running trials (wait) or now (an interrupted tune)."""
        processes = list((self._pool._processes or {}).values())  # shutdown forgets them
        self._pool.shutdown(wait=wait, cancel_futures=True)
        if not wait:
            for process in processes:
                process.terminate()


class RayExecutor:
    """Trials as Ray tasks (one CPU each) on the cluster at `address` ("local" starts one here).

    On a multi-node cluster the tune directory must be on storage every node sees, and every
    node needs bnserve installed with the `train` extra.
    """

    def __init__(self, address: str, workers: int | None) -> None:
        if workers is not None and workers < 1:
            raise SpaceError(f"--workers {workers}: need at least 1 worker")
        check_ray_address(address)
        try:
            import ray
        except ModuleNotFoundError:
            raise SpaceError("--ray-address needs Ray: pip install 'bnserve[ray]'") from None
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
    try:
        if address == "local":
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": env},
            )
        else:
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SpaceError(f"--ray-address {address}: cannot connect to Ray ({error})") from None


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast on an address nothing listens at, before Ray's own long retries."""
    if address in ("local", "auto"):
        return
    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SpaceError(
            f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or local"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise SpaceError(
            f"--ray-address {address}: unreachable ({error.strerror or error}); "
            "is the Ray head running (ray start --head)?"
        ) from None


def make_executor(workers: int, ray_address: str | None) -> Executor:
    """Local processes, or Ray when an address is given (validated before any trial)."""
    if ray_address:
        return RayExecutor(ray_address, workers)
    return LocalExecutor(workers)
