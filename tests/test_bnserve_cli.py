"""bnserve/cli.py: every command keeps README's exit codes — 2 with one line when it cannot do
its work (usage, a bad value, an unusable file), 1 only for a negative answer, 0 when done."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import bnserve.cli


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(command, its arguments, what its one error line names) for input it cannot use."""
    missing = str(tmp / "missing")
    bad_csv = tmp / "bad.csv"
    bad_csv.write_text("a,b,y\n1,2,0\n1,x,1\n")
    return [
        ("train", ["--out", str(tmp / "r1"), "--lr", "0"], "'lr' = 0.0 is invalid"),
        ("train", ["--out", str(tmp / "r2"), "--data", str(bad_csv)], "bad.csv"),
        ("train", ["--resume", missing], "missing"),
        ("tune", ["--out", str(tmp / "t1"), "--trials", "0"], "--trials 0"),
        ("tune", ["--out", str(tmp / "t2"), "--workers", "0"], "--workers 0"),
        ("tune", ["--out", str(tmp / "t3"), "--param", "lr=cubic:1:2"], "--param"),
        ("export", [missing, "--out", str(tmp / "m.onnx")], "missing"),
        ("export", [missing, "--out", str(tmp / "m.onnx"), "--reference-rows", "0"], "rows"),
        ("import", [missing + ".onnx", "--out", str(tmp / "i.onnx")], "missing.onnx"),
        ("drift", [missing + ".csv", "--model", missing + ".onnx"], "missing"),
        ("serve", ["--model", missing + ".onnx"], "missing.onnx"),
        ("serve", ["--model", "x.onnx", "--workers", "1"], "workers=1"),
        ("predict", ["--target", "127.0.0.1:1", "--features", "1", "--out", "p.csv"], "--out"),
    ]


@pytest.mark.parametrize("index", range(13))
def test_a_command_that_cannot_do_its_work_exits_2_with_one_line(index, tmp_path, capsys):
    command, args, named = _cases(tmp_path)[index]
    assert bnserve.cli.main([command, *args]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("bnserve ")]  # serve: + its log
    assert len(said) == 1 and said[0].startswith(f"bnserve {command}: error: "), err
    assert named in said[0] and "Traceback" not in err
    assert command == "serve" or err.count("\n") == 1  # serve logs its settings first


@pytest.mark.parametrize("command", sorted(bnserve.cli.SUBCOMMANDS))
def test_a_usage_error_exits_2_in_every_command(command, capsys):
    with pytest.raises(SystemExit) as exited:
        bnserve.cli.main([command, "--no-such-flag"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # argparse: the usage, then the error
    assert last.startswith(f"bnserve {command}: error: "), last
    assert bnserve.cli.main(["no-such-command"]) == 2


def test_a_call_that_ends_with_a_grpc_status_exits_1(capsys):
    port = _free_port()  # nothing listens: the call ends UNAVAILABLE
    args = ["predict", "--target", f"127.0.0.1:{port}", "--features", "1,2", "--timeout", "2"]
    assert bnserve.cli.main(args) == 1
    assert f"127.0.0.1:{port} answered UNAVAILABLE" in capsys.readouterr().err
