"""`--cpu-affinity auto|none|LIST`: the plan (pure), CPU lists and cpusets, and real servers
whose processes' cores are read back from /proc/PID/task/*/status (Cpus_allowed_list)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bnserve.server.process.cores import (
    allowed_cores,
    cgroup_cpuset,
    format_cpu_list,
    parse_cpu_list,
)
from bnserve.server.process.placement import plan_placement, setting_problem
from bnserve.server.settings import ServerSettings
from tests.support.model_builder import ModelFiles
from tests.support.server_process import ServerProcess

CHILD_PID = r"process (\d+) is pid (\d+), "
SUPERVISOR_READY = r"2 processes serving on port (\d+), ready"
needs_taskset = pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")


def _cores_of(pid: int) -> set[frozenset[int]]:
    """The distinct Cpus_allowed_list of every thread of process pid."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        status = (task / "status").read_text()
        listed = re.search(r"Cpus_allowed_list:\s*(\S+)", status).group(1)
        lists.add(parse_cpu_list(listed))
    return lists


def _children(server: ServerProcess) -> dict[int, int]:
    server.wait_for(SUPERVISOR_READY, 120)
    return {int(m[0]): int(m[1]) for m in re.findall(CHILD_PID, server.log())}


# --------------------------------------------------------------------------- the plan


def test_cpu_lists_read_and_written_as_taskset_does() -> None:
    assert parse_cpu_list("0-2,5, 7") == {0, 1, 2, 5, 7}
    assert format_cpu_list({0, 1, 2, 5, 7}) == "0-2,5,7"
    assert format_cpu_list((3,)) == "3"
    for bad in ("", "a", "1-", "3-1", "0,,1", "-1"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_auto_gives_process_i_the_i_th_allowed_core() -> None:
    placement = plan_placement("auto", 2, (2, 5, 7))
    assert placement.cores == (frozenset({2}), frozenset({5}))
    assert not placement.warnings and not placement.notes
    assert placement.flag(1) == "5" and placement.describe(1) == "pinned to core 5"


def test_auto_one_process_stays_on_the_core_it_started_on() -> None:
    assert plan_placement("auto", 1, (0, 1), current_core=1).cores == (frozenset({1}),)
    assert plan_placement("auto", 1, (0, 1), current_core=None).cores == (frozenset({0}),)
    assert plan_placement("auto", 1, (2, 3), current_core=0).cores == (frozenset({2}),)


def test_auto_on_one_core_puts_every_process_there_with_a_warning() -> None:
    placement = plan_placement("auto", 2, (0,))
    assert placement.cores == (frozenset({0}), frozenset({0}))
    assert placement.warnings and "2 serving processes share 1 core (0)" in placement.warnings[0]


def test_auto_pins_nothing_where_pinning_would_hurt_and_says_why() -> None:
    shared = plan_placement("auto", 2, tuple(range(8)), quota=2.0)
    assert shared.cores == (None, None) and "CPU quota of 2 cores" in shared.notes[0]
    threads = plan_placement("auto", 1, (0, 1), intra_op_threads=4)
    assert threads.cores == (None,) and "--intra-op-threads 4" in threads.notes[0]
    # a quota that covers the mask (an exclusive cpuset) still pins
    assert plan_placement("auto", 2, (0, 1), quota=1.5).cores == (frozenset({0}), frozenset({1}))


def test_none_pins_nothing_and_lists_split_among_processes() -> None:
    assert plan_placement("none", 2, (0, 1)).cores == (None, None)
    assert plan_placement("0-3", 1, (0, 1, 2, 3)).cores == (frozenset({0, 1, 2, 3}),)
    assert plan_placement("0-3", 2, (0, 1, 2, 3)).cores == (frozenset({0, 1}), frozenset({2, 3}))
    short = plan_placement("1", 2, (0, 1))
    assert short.cores == (frozenset({1}), frozenset({1})) and short.warnings


def test_a_list_outside_the_allowed_cores_is_refused_naming_them() -> None:
    with pytest.raises(ValueError) as refused:
        plan_placement("0-3", 2, (0, 1))
    assert str(refused.value) == (
        "--cpu-affinity 0-3: cores 2-3 outside the cores this process may use (0-1)"
    )


def test_the_setting_is_checked_with_the_others() -> None:
    assert ServerSettings().cpu_affinity == "auto"
    assert setting_problem("0-1,3") is None and setting_problem("none") is None
    with pytest.raises(ValueError, match="cpu_affinity='fast' must be 'auto', 'none' or a CPU"):
        ServerSettings(cpu_affinity="fast")
    loaded = ServerSettings.load(environ={"BNSERVE_CPU_AFFINITY": "none"})
    assert loaded.cpu_affinity == "none"


def test_cgroup_cpuset_v1_and_v2(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("3:cpuset:/docker/abc\n")
    v1 = tmp_path / "v1"
    (v1 / "cpuset" / "docker").mkdir(parents=True)
    (v1 / "cpuset" / "docker" / "cpuset.effective_cpus").write_text("0-7\n")
    assert cgroup_cpuset(v1, proc) == frozenset(range(8))  # the container's own dir is absent
    proc.write_text("0::/kubepods/pod1\n")
    v2 = tmp_path / "v2"
    (v2 / "kubepods" / "pod1").mkdir(parents=True)
    (v2 / "kubepods" / "cpuset.cpus.effective").write_text("0-15\n")
    (v2 / "kubepods" / "pod1" / "cpuset.cpus.effective").write_text("2-3\n")
    assert cgroup_cpuset(v2, proc) == {2, 3}
    assert cgroup_cpuset(tmp_path / "nothing", proc) == frozenset()
    mask = set(os.sched_getaffinity(0))
    if not mask & {2, 3}:
        assert allowed_cores(v2, proc) == tuple(sorted(mask))  # never an empty set
    else:
        assert set(allowed_cores(v2, proc)) == mask & {2, 3}


# --------------------------------------------------------------------------- real servers


@pytest.mark.skipif(len(allowed_cores()) < 2, reason="needs two allowed cores")
def test_auto_puts_two_processes_on_two_allowed_cores(test_models: ModelFiles) -> None:
    allowed = set(allowed_cores())
    server = ServerProcess(
        ["--model", str(test_models.classification), "--processes", "2", "--cpu-affinity", "auto"]
    )
    try:
        children = _children(server)
        assert sorted(children) == [0, 1]
        placed = [_cores_of(pid) for pid in children.values()]
        for index, threads in zip(children, placed, strict=True):
            assert len(threads) == 1, f"process {index}'s threads disagree: {threads}"
            (cores,) = threads
            assert len(cores) == 1 and cores <= allowed
            assert (
                f"process {index} is pid {children[index]}, pinned to core {min(cores)}"
                in server.log()
            )
        assert placed[0] != placed[1]
        assert _cores_of(server.process.pid) == {frozenset(allowed)}  # the supervisor: not pinned
    finally:
        assert server.stop() == 0


@needs_taskset
def test_a_one_core_mask_leaves_both_processes_on_it_with_a_warning(
    test_models: ModelFiles,
) -> None:
    core = min(allowed_cores())
    server = ServerProcess(
        ["--model", str(test_models.classification), "--processes", "2"], cpus=str(core)
    )
    try:
        children = _children(server)
        for pid in children.values():
            assert _cores_of(pid) == {frozenset({core})}
        assert re.search(rf"WARNING .*2 serving processes share 1 core \({core}\)", server.log())
    finally:
        assert server.stop() == 0


def test_one_process_auto_is_pinned_to_one_allowed_core(test_models: ModelFiles) -> None:
    server = ServerProcess(["--model", str(test_models.classification)])
    try:
        server.wait_ready()
        (cores,) = _cores_of(server.process.pid)  # every thread: grpc's, HTTP's, metrics'
        assert len(cores) == 1 and cores <= set(allowed_cores())
        pid = server.process.pid
        assert f"this process (pid {pid}): pinned to core {min(cores)}" in server.log()
    finally:
        assert server.stop() == 0


def test_none_leaves_the_inherited_mask(test_models: ModelFiles) -> None:
    server = ServerProcess(["--model", str(test_models.classification), "--cpu-affinity", "none"])
    try:
        server.wait_ready()
        assert _cores_of(server.process.pid) == {frozenset(os.sched_getaffinity(0))}
        assert f"this process (pid {server.process.pid}): not pinned" in server.log()
    finally:
        assert server.stop() == 0


@needs_taskset
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_list_outside_the_mask_is_refused_in_one_line(
    test_models: ModelFiles, processes: str
) -> None:
    core = min(allowed_cores())
    other = core + 1
    refused = subprocess.run(
        ["taskset", "-c", str(core), sys.executable, "-m", "bnserve.server",
         "--model", str(test_models.classification), "--processes", processes,
         "--cpu-affinity", f"{core},{other}", "--port", "0", "--http-port", "0",
         "--metrics-port", "0"],  # refused before anything binds; nothing to collide
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"bnserve serve: error: --cpu-affinity {core}-{other}: core {other} outside the cores "
        f"this process may use ({core})"
    ]
