"""Logging set-up: human-readable lines, or one JSON object a line for log collectors."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message"[, "exception"], and a record's `fields`} a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)  # structured lines (the access log)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    """Send every log record to stderr at level, in log_format ("text" or "json")."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class LogThrottle:
    """At most one log line per key every `interval_s` seconds, counting the lines held back.

    For lines a client can trigger at will (refused tokens): a flood of them costs a counter
    increment each, not a write each, and the next line that passes says how many it stood for.
    Keys must come from a small set (method and reason, not client input).
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_line_at: dict[Hashable, float] = {}
        self._held_back: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> int | None:
        """None: hold this line back. Otherwise log it, adding how many were held back (≥ 0)."""
        now = self._clock()
        with self._lock:
            if now < self._next_line_at.get(key, -math.inf):
                self._held_back[key] = self._held_back.get(key, 0) + 1
                return None
            self._next_line_at[key] = now + self.interval_s
            return self._held_back.pop(key, 0)
