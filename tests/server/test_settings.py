"""ServerSettings: defaults, BNSERVE_* env vars, flags over env, validation, one-line summary."""

from __future__ import annotations

import pytest

from bnserve.server.cli import build_parser, main, settings_from_args
from bnserve.server.settings import ServerSettings, settable_fields


def test_every_field_has_help_and_a_flag() -> None:
    flags = {action.dest for action in build_parser()._actions}
    for setting in settable_fields():
        assert setting.metadata["help"], f"{setting.name} has no help text"
        assert setting.name in flags


def test_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNSERVE_PORT", "6000")
    monkeypatch.setenv("BNSERVE_BATCHING", "true")
    monkeypatch.setenv("BNSERVE_MAX_BATCH_DELAY_MS", "2.5")
    settings = settings_from_args(["--port", "7000", "--model", "m.onnx"])
    assert (settings.port, settings.batching, settings.max_batch_delay_ms) == (7000, True, 2.5)
    assert settings.model == ("m.onnx",)  # repeatable: one entry per --model
    assert settings_from_args(["--no-batching"]).batching is False
    assert set(settings.from_env) == {
        "BNSERVE_PORT",
        "BNSERVE_BATCHING",
        "BNSERVE_MAX_BATCH_DELAY_MS",
    }


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"BNSERVE_PORT": "eighty"}, "BNSERVE_PORT='eighty'"),
        ({"BNSERVE_HEALTH": "maybe"}, "BNSERVE_HEALTH='maybe': expected one of"),
        ({"BNSERVE_PORT": "70000"}, "port=70000 must be in 0..65535"),
        ({"BNSERVE_MAX_INFLIGHT": "16"}, "max_inflight=16 must be in 1..workers-1"),
        ({"BNSERVE_MAX_CONCURRENT_RPCS": "12"}, "max_concurrent_rpcs=12 must be above"),
        ({"BNSERVE_DRAIN_S": "-1"}, "drain_s=-1.0 must be ≥ 0"),
        ({"BNSERVE_REQUEST_TIMEOUT_S": "0"}, "request_timeout_s=0.0 must be > 0"),
        ({"BNSERVE_MAX_CONCURRENT_RPCS": "100"}, "above max_waiting_calls (256)"),
        ({"BNSERVE_STREAM_WORKERS": "0"}, "stream_workers=0 must be ≥ 1"),
    ],
)
def test_bad_values_are_named(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        ServerSettings.load(environ=environ)
    assert message in str(raised.value)


def test_summary_is_one_line_with_every_field() -> None:
    summary = ServerSettings.load(environ={"BNSERVE_WORKERS": "20"}).summary()
    assert "\n" not in summary
    for setting in settable_fields():
        assert f"{setting.name}=" in summary
    assert "(from env: BNSERVE_WORKERS)" in summary


def test_cli_rejects_missing_or_absent_model(
    tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BNSERVE_MODEL", raising=False)
    assert main([]) == 2
    assert "--model PATH is required" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "nope.onnx")]) == 2
    assert "nope.onnx does not exist" in capsys.readouterr().err
    assert main(["--model", "x.onnx", "--workers", "1"]) == 2
    assert "workers=1 must be ≥ 2" in capsys.readouterr().err
