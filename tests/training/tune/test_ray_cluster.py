"""`bnserve tune --ray-address HOST:PORT` against a real `ray start --head` with token
authentication, kept on loopback (slow: a Ray head takes ~20 s to start on a loaded machine).

Ray resolves `--node-ip-address 127.0.0.1` to the machine's routable address and binds its
servers to every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine mode) keeps
every one of them on 127.0.0.1, which the test checks with `ss`.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bnserve.training.tune.store import FILENAME, TrialStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed"),
    pytest.mark.skipif(shutil.which("ss") is None, reason="checks sockets with ss (iproute2)"),
]

BIN = Path(sys.executable).parent
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TUNE = [
    "--objective",
    "synthetic",
    "--trials",
    "4",
    "--workers",
    "2",
    "--no-progress",
    "--no-plots",
]
STARTUP_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Head:
    address: str
    token: str
    process: subprocess.Popen
    home: Path  # the head's HOME (its ~/.ray)


def _clean_env(**extra: str) -> dict[str, str]:
    """No RAY_* variable but `extra`: the tune itself keeps a loopback address on loopback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    """A Ray head on 127.0.0.1 requiring a token; stopped (its whole process group) after."""
    root = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths must stay short
    token = secrets.token_hex(16)
    port = _free_port()
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
        "--ray-client-server-port", str(_free_port()),
        "--dashboard-agent-listen-port", str(_free_port()),
        "--temp-dir", str(root / "ray"), "--disable-usage-stats",
    ]  # fmt: skip
    env = _clean_env(HOME=str(root), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, **LOOPBACK_ONLY)
    log = (root / "head.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while "Ray runtime started" not in (root / "head.log").read_text():
            assert process.poll() is None, (root / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.2)
        yield Head(f"127.0.0.1:{port}", token, process, root)
    finally:
        _stop_group(process)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the head's own process group, then SIGKILL what is left after 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while _group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
        process.poll()
    if _group_members(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_members(group: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _sockets(pids: set[int], *ss_args: str) -> list[tuple[str, str, int]]:
    """(local address, peer address, pid) of the pids' TCP sockets, from `ss -Htnp ...`."""
    lines = subprocess.run(
        ["ss", "-Htnp", *ss_args], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    found = []
    for line in lines:
        addresses, _, users = line.partition(" users:")
        local, peer = addresses.split()[-2:]  # a State column comes first only with -l
        for pid in map(int, re.findall(r"pid=(\d+)", users)):
            if pid in pids:
                found.append((local, peer, pid))
    return found


def _host(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "*":
        return None  # every interface
    ip = ipaddress.ip_address(host)
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


def _assert_loopback_only(pids: set[int]) -> None:
    listening = _sockets(pids, "-l")
    assert listening, "no listening socket found for the Ray head"
    for local, _, pid in listening:
        host = _host(local)
        assert host is not None and host.is_loopback, f"pid {pid} listens on {local}"
    for local, peer, pid in _sockets(pids, "state", "established"):
        host = _host(peer)
        assert host is not None and host.is_loopback, f"pid {pid} connects {local} → {peer}"


def _tune(out: Path, address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "bnserve"), "tune", "--out", str(out), "--ray-address", address, *TUNE],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def _finished(out: Path) -> list[str]:
    with TrialStore(out / FILENAME, readonly=True) as store:
        return [record.state for record in store.trials()]


def test_without_the_token_the_tune_is_refused_in_one_line(head: Head, tmp_path: Path) -> None:
    """The bug's first half: no token given, and Ray's traceback ("InvalidAuthToken")."""
    result = _tune(tmp_path / "tune", head.address, _clean_env(HOME=str(tmp_path)))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"bnserve tune: error: --ray-address {head.address}: "), result.stderr
    assert "RAY_AUTH_TOKEN" in last and "Traceback" not in result.stderr
    assert not (tmp_path / "tune").exists()


@pytest.mark.parametrize("source", ["RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "default file"])
def test_the_tune_joins_the_cluster_with_the_token_from(
    head: Head, tmp_path: Path, source: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    if source == "RAY_AUTH_TOKEN":
        env = _clean_env(HOME=str(home), RAY_AUTH_TOKEN=head.token)
    elif source == "RAY_AUTH_TOKEN_PATH":
        (tmp_path / "token").write_text(head.token)
        env = _clean_env(HOME=str(home), RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"))
    else:  # ~/.ray/auth_token, where `ray get-auth-token --generate` puts it
        (home / ".ray").mkdir()
        (home / ".ray" / "auth_token").write_text(head.token)
        env = _clean_env(HOME=str(home))
    result = _tune(tmp_path / "tune", head.address, env)
    assert result.returncode == 0, result.stderr
    assert _finished(tmp_path / "tune") == ["finished"] * 4
    _assert_loopback_only(set(_group_members(head.process.pid)))
