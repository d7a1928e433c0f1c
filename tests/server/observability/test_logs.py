"""Structured logs: one JSON object a line, exceptions included, nothing else on the line."""

from __future__ import annotations

import io
import json
import logging

import pytest

from bnserve.server.observability.logs import JsonFormatter, LogThrottle, configure_logging


def _formatted(record_logger: logging.Logger, formatter: logging.Formatter) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    record_logger.addHandler(handler)
    try:
        record_logger.warning("model %s: version %s refused", "iris", "3\nwith a newline")
        try:
            raise ValueError("bad")
        except ValueError:
            record_logger.exception("scan failed")
    finally:
        record_logger.removeHandler(handler)
    return stream.getvalue().splitlines()


def test_json_lines() -> None:
    record_logger = logging.getLogger("bnserve.test.json")
    record_logger.propagate = False
    lines = _formatted(record_logger, JsonFormatter())
    assert len(lines) == 2  # the newline in the message and the traceback stay inside
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "model iris: version 3\nwith a newline refused"
    assert (first["level"], first["logger"]) == ("WARNING", "bnserve.test.json")
    assert first["time"].endswith("+00:00")
    assert second["message"] == "scan failed"
    assert "ValueError: bad" in second["exception"]


@pytest.mark.parametrize(("log_format", "is_json"), [("json", True), ("text", False)])
def test_configure_logging_replaces_root_handlers(log_format: str, is_json: bool) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("debug", log_format)
        assert root.level == logging.DEBUG and len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter) is is_json
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_log_throttle_lets_one_line_a_key_through_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    throttle = LogThrottle(10.0, clock=lambda: now[0])
    assert throttle.admit("a") == 0
    assert [throttle.admit("a") for _ in range(5)] == [None] * 5
    assert throttle.admit("b") == 0  # keys are throttled apart
    now[0] += 9.99
    assert throttle.admit("a") is None
    now[0] += 0.01
    assert throttle.admit("a") == 6  # the line that passes tells how many it stood for
    assert throttle.admit("a") is None
