"""Placement rows of bench/serve.py (issue 31): one bnserve server, placed three ways, with one
and with two serving processes, side by side in one run.

  unpinned  `--cpu-affinity none`: the kernel places every thread;
  taskset   `--cpu-affinity none`, pinned from outside as an operator would: one process under
            `taskset -c C`; two processes pinned after start-up, child i to the i-th server core
            with `taskset -a -p -c` (every thread);
  auto      `--cpu-affinity auto` (server/process/placement.py).
The row whose placement is the default carries "(default)". Every server has HTTP and metrics on,
as the defaults have them. The same h2load load (v2 ModelInfer, raw_input_contents, as
tritonclient sends; interleaved rounds, median) goes to each; each row gives requests/s and the
server's CPU time per call (utime + stime of the server and its child processes over the calls
answered). Then `--processes 2` over one process placed the same way, and over the default
single process.

The load generator gets cores of its own where the machine has a core beyond the server's two;
on two cores it shares them with the servers, so the server's CPU per call is the figure to read
beside requests/s (the load average before and after is printed).

Run by bench/serve.py (alone: python bench/serve.py --placement).
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve

PLACEMENTS = ("unpinned", "taskset", "auto")
PROCESS_COUNTS = (1, 2)


@dataclass(frozen=True)
class Cores:
    """Where the servers and the load generator run."""

    server: tuple[int, ...]  # at most two: the servers' cores
    load: tuple[int, ...]  # h2load's: its own where the machine allows, else the servers'

    @classmethod
    def of_this_machine(cls) -> Cores:
        allowed = tuple(sorted(os.sched_getaffinity(0)))
        if len(allowed) >= 3:
            return cls(allowed[:2], allowed[2:])
        return cls(allowed, allowed)

    @property
    def shared(self) -> bool:
        return bool(set(self.server) & set(self.load))


def label(placement: str, processes: int, default: str) -> str:
    mark = " (default)" if placement == default else ""
    return f"{processes} process{'es' if processes > 1 else ''}, {placement}{mark}"


def default_placement() -> str:
    """The placement row that `bnserve serve` gives when not told (settings.py's default)."""
    from bnserve.server.settings import ServerSettings

    return {"auto": "auto", "none": "unpinned"}.get(ServerSettings().cpu_affinity, "")


def server_command(
    model: Path, placement: str, processes: int, cores: Cores, settings: serve.BenchSettings
) -> list[str]:
    """bnserve as bench/serve.py runs it, HTTP and metrics on, placed as asked; every server is
    kept off the load generator's own cores (when it has any)."""
    port = serve.free_port()
    command = serve.bnserve_command(model, port, settings, processes=processes)
    command = command[command.index(sys.executable) :]  # without bnserve_command's taskset
    command += ["--http-port", str(serve.free_port()), "--metrics-port", str(serve.free_port())]
    command += ["--cpu-affinity", "auto" if placement == "auto" else "none"]
    if placement == "taskset" and processes == 1:
        return ["taskset", "-c", str(cores.server[0]), *command]
    if not cores.shared:
        return ["taskset", "-c", ",".join(map(str, cores.server)), *command]
    return command


def pin_children_from_outside(supervisor_pid: int, cores: Cores) -> None:
    """The taskset row of two processes: child i (in start order) to the i-th server core, every
    thread, with taskset -a -p, after start-up."""
    children_file = Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children")
    children = sorted(int(pid) for pid in children_file.read_text().split())
    for index, pid in enumerate(children):
        core = cores.server[index % len(cores.server)]
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(core), str(pid)], check=True, capture_output=True
        )


def measure_placement(
    model: Path, row: np.ndarray, settings: serve.BenchSettings, scratch: Path
) -> bool:
    """Start the six servers, load them in interleaved rounds, print the tables; True when
    every call answered fully."""
    serve.ensure_h2load()
    cores = Cores.of_this_machine()
    default = default_placement()
    messages = serve.request_messages(row, settings)
    infer = messages["infer"][0]
    load_before = os.getloadavg()
    with ExitStack() as stack:
        targets = []
        for processes in PROCESS_COUNTS:
            for placement in PLACEMENTS:
                command = server_command(model, placement, processes, cores, settings)
                port = int(command[command.index("--port") + 1])
                ready = f"{processes} processes serving" if processes > 1 else ""
                pid = stack.enter_context(
                    serve.running(command, port, serve.PATHS["infer"], infer, ready)
                )
                if placement == "taskset" and processes > 1:
                    pin_children_from_outside(pid, cores)
                answer = serve.call_once(port, serve.PATHS["infer"], [infer], False)[0]
                targets.append(
                    serve.Target(
                        label(placement, processes, default),
                        port,
                        serve.PATHS["infer"],
                        serve.frame(infer),
                        1,
                        len(serve.frame(answer)),
                        pid,
                        ",".join(map(str, cores.load)),
                    )
                )
        results = {
            c: serve.interleaved(targets, c, settings, scratch) for c in settings.concurrencies
        }
    report(results, cores, default, load_before, settings)
    return all(result.verified for rows in results.values() for result in rows.values())


def report(
    results: dict[int, dict[str, serve.LoadResult]],
    cores: Cores,
    default: str,
    load_before: tuple[float, float, float],
    settings: serve.BenchSettings,
) -> None:
    concurrencies = list(results)
    server_cores = ",".join(map(str, cores.server))
    where = (
        f"h2load shares cores {server_cores} with the servers (no core of its own here): read "
        "the server CPU per call beside requests/s"
        if cores.shared
        else f"servers on cores {server_cores}, h2load on {','.join(map(str, cores.load))}"
    )
    print(
        f"\nplacement (v2 ModelInfer, one example a call; {where}; median of {settings.rounds} "
        f"interleaved runs of ~{settings.duration_s} s per cell)"
    )
    print(f"{'':<34}" + "".join(f"{f'concurrency {c}':>22}" for c in concurrencies))
    print(f"{'server':<34}" + f"{'req/s':>9}{'CPU µs/call':>13}" * len(concurrencies))
    for name in results[concurrencies[0]]:
        cells = []
        for c in concurrencies:
            result = results[c][name]
            mark = " " if result.verified else "!"
            cells.append(f"{result.requests_per_s:>8.0f}{mark}{result.server_cpu_us:>13.0f}")
        print(f"{name:<34}" + "".join(cells))
    single_default = label(default, 1, default)
    print("\n--processes 2 over one process, requests/s")
    print(f"{'':<34}" + "".join(f"{f'c={c}':>18}" for c in concurrencies))
    print(f"{'placed as':<34}" + f"{'same way':>9}{'default':>9}" * len(concurrencies))
    for placement in PLACEMENTS:
        two, one = label(placement, 2, default), label(placement, 1, default)
        cells = [
            f"{results[c][two].requests_per_s / results[c][one].requests_per_s:>9.2f}"
            f"{results[c][two].requests_per_s / results[c][single_default].requests_per_s:>9.2f}"
            for c in concurrencies
        ]
        print(f"{placement:<34}" + "".join(cells))
    print(
        "\nserver CPU per call over the same server pinned by taskset (goal for the default ≤ 1.05)"
    )
    print(f"{'':<34}" + "".join(f"{f'c={c}':>9}" for c in concurrencies))
    for processes in PROCESS_COUNTS:
        for placement in ("unpinned", "auto"):
            name = label(placement, processes, default)
            pinned = label("taskset", processes, default)
            cells = [
                f"{results[c][name].server_cpu_us / results[c][pinned].server_cpu_us:>9.2f}"
                for c in concurrencies
            ]
            print(f"{name:<34}" + "".join(cells))
    print(
        "\nload average (1/5/15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} {:.2f} "
        "({} CPUs)".format(*load_before, *os.getloadavg(), os.cpu_count())
    )
