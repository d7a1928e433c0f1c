"""bnserve/cli.py: every command keeps README's exit codes — 2 with one line when it cannot do
its work (usage, a bad value, an unusable file), 1 only for a negative answer, 0 when done."""

from __future__ import annotations

import json
import re
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
        ("adapt", [missing + ".onnx", "--data", "r.csv", "--out", "a.onnx"], "missing.onnx"),
        ("serve", ["--model", missing + ".onnx"], "missing.onnx"),
        ("serve", ["--model", "x.onnx", "--workers", "1"], "workers=1"),
        ("predict", ["--target", "127.0.0.1:1", "--features", "1", "--out", "p.csv"], "--out"),
    ]


@pytest.mark.parametrize("index", range(14))
def test_a_command_that_cannot_do_its_work_exits_2_with_one_line(index, tmp_path, capsys):
    command, args, named = _cases(tmp_path)[index]
    assert bnserve.cli.main([command, *args]) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("bnserve ")]  # serve: + its log
    assert len(said) == 1 and said[0].startswith(f"bnserve {command}: error: "), err
    assert named in said[0] and "Traceback" not in err
    assert err.count("\n") == 1, err  # serve too: no settings line before a failed start


@pytest.mark.parametrize("command", sorted(bnserve.cli.SUBCOMMANDS))
def test_a_usage_error_exits_2_in_every_command(command, capsys):
    with pytest.raises(SystemExit) as exited:
        bnserve.cli.main([command, "--no-such-flag"])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # argparse: the usage, then the error
    assert last.startswith(f"bnserve {command}: error: "), last
    assert bnserve.cli.main(["no-such-command"]) == 2


def test_a_predict_with_no_server_listening_exits_2(capsys):
    """Nothing answered, so no negative answer (1): the client could not do its work (2)."""
    port = _free_port()
    args = ["predict", "--target", f"127.0.0.1:{port}", "--features", "1,2", "--timeout", "2"]
    assert bnserve.cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bnserve predict: error: nothing is listening at 127.0.0.1:{port} ")
    assert err.count("\n") == 1


def test_bare_bnserve_prints_the_usage_and_exits_2(capsys):
    assert bnserve.cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: bnserve COMMAND")
    assert all(f"  {name} " in captured.err for name in bnserve.cli.SUBCOMMANDS)


def test_version_is_the_installed_distribution_s(capsys):
    from importlib import metadata

    assert bnserve.cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"bnserve {metadata.version('bnserve')}\n"


def test_help_command_is_the_command_s_help(capsys):
    with pytest.raises(SystemExit) as exited:
        bnserve.cli.main(["help", "export"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: bnserve export ")
    assert bnserve.cli.main(["help", "exprot"]) == 2
    assert "unknown command 'exprot' (did you mean 'export'?)" in capsys.readouterr().err


def test_serve_summary_names_rest_and_metrics(capsys):
    assert bnserve.cli.main(["--help"]) == 0
    assert "serve an ONNX model over gRPC, HTTP/REST and metrics" in capsys.readouterr().out


def _tables(tmp: Path) -> dict[str, Path]:
    """The same 30-row table as a plain CSV, with a UTF-8 BOM, and separated by ';'."""
    rows = [f"{i % 3},{i % 5},{i % 3}" for i in range(30)]
    plain = tmp / "plain.csv"
    plain.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    bom = tmp / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    semicolons = tmp / "semicolons.csv"
    semicolons.write_text(plain.read_text().replace(",", ";"))
    return {"plain": plain, "bom": bom, "semicolons": semicolons}


def _mistake(capsys, command: str, *args: str) -> str:
    """Run a command that must refuse: its one line (exit 2, nothing else on stderr)."""
    code = bnserve.cli.main([command, *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    return err.rstrip("\n")


def _small(command: str) -> list[str]:
    """Flags that keep a train or a tune to a second."""
    if command == "train":
        return ["--hidden", "4", "--epochs", "1", "--no-progress"]
    return ["--trials", "1", "--workers", "1", "--epochs", "1", "--no-progress", "--no-plots"]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_bom_csv_trains_and_tunes_as_the_plain_one(command, tmp_path, capsys):
    tables = _tables(tmp_path)
    for kind in ("plain", "bom"):
        args = ["--out", str(tmp_path / kind), "--data", str(tables[kind]), *_small(command)]
        assert bnserve.cli.main([command, *args]) == 0, capsys.readouterr().err
    runs = [tmp_path / kind / ("best" if command == "tune" else "") for kind in ("plain", "bom")]
    names = [json.loads((run / "meta.json").read_text())["feature_names"] for run in runs]
    assert names[0] == names[1] == ["a", "b"]


@pytest.mark.parametrize("command", ["train", "tune"])
def test_a_semicolon_csv_gets_the_delimiter_hint_then_reads_with_it(command, tmp_path, capsys):
    data = _tables(tmp_path)["semicolons"]
    line = _mistake(capsys, command, "--out", str(tmp_path / "a"), "--data", str(data))
    assert line == (
        f"bnserve {command}: error: {data}: line 1: the header has one column containing ';' — "
        "is the file separated by ';'? (--delimiter ';')"
    )
    args = ["--out", str(tmp_path / "b"), "--data", str(data), "--delimiter", ";"]
    assert bnserve.cli.main([command, *args, *_small(command)]) == 0


def test_a_wrong_target_column_suggests_the_closest(tmp_path, capsys):
    data = _tables(tmp_path)["plain"]
    line = _mistake(capsys, "train", "--out", str(tmp_path / "r"), "--data", str(data),
                    "--target", "lable")  # fmt: skip
    assert line == (
        f"bnserve train: error: {data}: target column 'lable' is not in the header; "
        "did you mean 'label'?"
    )


def test_a_long_header_without_a_close_name_is_cut_short(tmp_path, capsys):
    data = tmp_path / "wide.csv"
    data.write_text(",".join(f"x{i}" for i in range(65)) + "\n" + ",".join(["1"] * 65) + "\n")
    line = _mistake(capsys, "train", "--out", str(tmp_path / "r"), "--data", str(data),
                    "--target", "digit")  # fmt: skip
    assert line.endswith("the columns are ['x0', 'x1', 'x2', 'x3', 'x4', 'x5', …] (65)")


def test_the_built_in_digits_refuse_a_target_they_lack_and_take_their_own(tmp_path, capsys):
    line = _mistake(capsys, "train", "--out", str(tmp_path / "a"), "--target", "digits")
    assert line == (
        "bnserve train: error: digits: the built-in set has no column 'digits'; its target is "
        "'digit' (--target digit, or leave --target out)"
    )
    args = ["--out", str(tmp_path / "b"), "--target", "digit", *_small("train")]
    assert bnserve.cli.main(["train", *args]) == 0


def test_serving_a_run_directory_says_bnserve_export_makes_the_model(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "digits"
    run_dir.mkdir(parents=True)
    for name in ("config.json", "meta.json", "params.npz"):
        (run_dir / name).write_text("{}")
    line = _mistake(capsys, "serve", "--model", str(run_dir))
    assert line == (
        f"bnserve serve: error: model path {run_dir} is a training run directory, not a model: "
        f"make a model from it with `bnserve export {run_dir} --out model.onnx`, then serve that"
    )


def test_exporting_a_path_that_does_not_exist_says_so(tmp_path, capsys):
    missing = tmp_path / "runs" / "nope"
    line = _mistake(capsys, "export", str(missing), "--out", str(tmp_path / "m.onnx"))
    assert line == (
        f"bnserve export: error: not an exportable run: {missing}: does not exist (a run "
        "directory of bnserve train is needed)"
    )


@pytest.mark.parametrize("command", sorted(bnserve.cli.SUBCOMMANDS))
def test_every_help_writes_defaults_one_way_with_plain_values(command, capsys):
    """`(default: X)` everywhere, X as a user types it: no Python reprs ('127.0.0.1', '', ())."""
    with pytest.raises(SystemExit):
        bnserve.cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "(default" in text
    assert not re.search(r"\(default(?!: )", text), re.findall(r".{40}\(default(?!: ).{20}", text)
    shown = re.findall(r"\(default: ([^)]*)\)", text)
    assert not [value for value in shown if value[:1] in ("'", '"', "(", "") or value == "None"]


def test_serve_help_shows_model_as_the_required_choice(capsys):
    with pytest.raises(SystemExit):
        bnserve.cli.main(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert help_text.startswith(
        "usage: bnserve serve (--model PATH [--model PATH ...] | --model-root DIR) [OPTIONS]"
    )
    text = " ".join(help_text.split())
    assert "(default: 127.0.0.1)" in text and "--name NAME Model name clients use; empty:" in text


def test_a_reader_that_goes_away_stops_it_quietly(tmp_path: Path) -> None:
    """`bnserve import … | head -1`: stdout's pipe closed before the command prints; no
    traceback, exit 141 as a program SIGPIPE stops (Python ignores SIGPIPE and raises)."""
    import os
    import subprocess
    import sys

    fixture = Path(__file__).parent / "export" / "fixtures" / "torch_digits.onnx"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write fails
    try:
        done = subprocess.run(
            [sys.executable, "-u", "-m", "bnserve", "import", str(fixture),
             "--out", str(tmp_path / "folded.onnx"), "--task", "classification",
             "--reference-data", "digits", "--class-names", ",".join(map(str, range(10)))],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == bnserve.cli.BROKEN_PIPE
