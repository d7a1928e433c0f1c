"""`python -m bnserve.server` as a real subprocess for the operations tests: start it, read its log,
signal it, measure its memory, and lay out model directories the way operators do."""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import onnx

from bnserve.server.settings import ServerSettings
from tests.support.model_builder import MlpWeights, build_model

READY_PATTERN = r"serving on port (\d+), ready"


def free_port() -> int:
    """A TCP port nothing listens on right now (for --metrics-port, where 0 means off), drawn
    below the kernel's ephemeral range: a port the kernel hands out for port 0 can be taken by
    any client socket's own end before the server binds it (seen once in CI: "Address already
    in use" for a test's --http-port)."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class ServerProcess:
    """A running `python -m bnserve.server`; every stderr line is kept in `lines`."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cpus: str = "",
        literal_defaults: bool = False,
        file_limit: int | None = None,
    ) -> None:
        """cpus: a CPU list the server starts confined to (taskset -c), as an inherited
        affinity mask; "": this process's own. literal_defaults: nothing added to args or env,
        so every port is its default (only where nothing else can hold them: defaults_probe.py
        runs in a network namespace of its own). file_limit: the server's soft RLIMIT_NOFILE (None:
        this process's)."""
        # Otherwise HTTP and metrics on, as the defaults have them, each on a free port of its
        # own: the fixed 8000 and 9090 would collide with other test servers or programs. A test
        # turns one off (flag or env) only for a reason it states.
        defaults = {"BNSERVE_HTTP_PORT": str(free_port()), "BNSERVE_METRICS_PORT": str(free_port())}
        environment = {**({} if literal_defaults else defaults), **os.environ, **(env or {})}
        self.http_port = _port_setting(args, environment, "http_port")  # 0: HTTP off
        self.metrics_port = _port_setting(args, environment, "metrics_port")  # 0: metrics off
        confined = ["taskset", "-c", cpus] if cpus else []  # taskset execs: the pid is the server
        where = [] if literal_defaults else ["--host", "127.0.0.1", "--port", "0"]
        self.process = subprocess.Popen(
            [*confined, sys.executable, "-m", "bnserve.server", *where, *args],
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            preexec_fn=None if file_limit is None else lambda: _limit_files(file_limit),
        )
        self.lines: list[str] = []
        self._new_lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            self._new_lines.put(line)

    def wait_ready(self, timeout_s: float = 120) -> int:
        """Wait for the 'serving on port N, ready' line; returns the port."""
        self.port = int(self.wait_for(READY_PATTERN, timeout_s).group(1))
        return self.port

    def wait_for(self, pattern: str, timeout_s: float = 90) -> re.Match[str]:
        """The first log line (already seen or new) matching pattern; fails after timeout_s."""
        deadline = time.monotonic() + timeout_s
        checked = 0
        while time.monotonic() < deadline:
            for line in self.lines[checked:]:
                checked += 1
                if match := re.search(pattern, line):
                    return match
            if self.process.poll() is not None and checked >= len(self.lines):
                self._reader.join(timeout=5)
                if checked >= len(self.lines):
                    break
            with contextlib.suppress(queue.Empty):
                self._new_lines.get(timeout=0.05)
        raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log()}")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return "".join(self.lines)

    def rss_bytes(self) -> int:
        """Resident memory of the server process now."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024

    def thread_count(self) -> int:
        """Threads of the server process now."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"Threads:\s+(\d+)", status).group(1))

    def signal(self, signal_number: int) -> None:
        self.process.send_signal(signal_number)

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM and wait; returns the exit code (kills it if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not exit {timeout_s} s after SIGTERM") from None
        finally:
            self._reader.join(timeout=5)
            if self.process.stderr is not None:
                self.process.stderr.close()


def _limit_files(soft: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _port_setting(args: list[str], environment: dict[str, str], name: str) -> int:
    """The port a server started with args and environment uses for setting name (flags win
    over the environment, which wins over the default)."""
    flag = "--" + name.replace("_", "-")
    default = getattr(ServerSettings(), name)
    value = environment.get("BNSERVE_" + name.upper(), str(default))
    for position, arg in enumerate(args):
        if arg == flag and position + 1 < len(args):
            value = args[position + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return int(value)


def model_bytes(seed: int, task: str = "classification") -> tuple[bytes, MlpWeights]:
    """A serialized contract-compliant test model and its weights; seeds give distinct outputs."""
    model, weights = build_model(task, seed=seed)
    return model.SerializeToString(), weights


def bad_parity_bytes(seed: int) -> bytes:
    """A well-formed model whose reference rows come from other weights: fails the parity gate."""
    other = MlpWeights.random(3, seed=seed + 500)
    model, _ = build_model("classification", seed=seed, reference_weights=other)
    return model.SerializeToString()


def corrupt_bytes(valid: bytes) -> bytes:
    """A valid model with one weight byte flipped: it still loads, but its graph hash
    mismatches the metadata (the tampering the checksum is there to catch)."""
    weights = onnx.load_model_from_string(valid).graph.initializer[0].raw_data
    position = valid.index(weights) + len(weights) // 2
    return valid[:position] + bytes([valid[position] ^ 0xFF]) + valid[position + 1 :]


def install_version(model_dir: Path, version: int, data: bytes, old_mtime: bool = True) -> Path:
    """Stage data as model.onnx beside the versions, then rename it into place atomically (as an
    operator's `mv` does). old_mtime dates the file back, as a file copied earlier would be."""
    staging = model_dir / f".staging-{version}"
    staging.mkdir(parents=True)
    path = staging / "model.onnx"
    path.write_bytes(data)
    if old_mtime:
        past = time.time() - 3600
        os.utime(path, (past, past))
    final = model_dir / str(version)
    os.rename(staging, final)
    return final / "model.onnx"


def remove_version(model_dir: Path, version: int) -> None:
    shutil.rmtree(model_dir / str(version))
