"""grpc's C core writes its log lines straight to file descriptor 2, past Python's logging: one
line per failed TLS handshake (500 connections made 500 lines), and never as JSON. This module
puts a pipe on fd 2 and re-logs each core line through Python's logging (logger `grpc.core`,
at the line's own severity, in the server's log format); handshake failures, which any client
can cause at will, go through a LogThrottle. Python's own stderr keeps the original fd 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import TextIO

from bnserve.server.observability.logs import LogThrottle

log = logging.getLogger("grpc.core")

# "E1201 07:47:00.503545   10253 file.cc:2563] message"
_CORE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]+\] (.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_THROTTLED = {"Handshake failed": "TLS handshake failed"}  # core text → what the line says


class CoreLogRelay:
    """Owns the pipe on fd 2 and the thread that re-logs what grpc's core writes to it; a
    context manager: on exit fd 2 and sys.stderr are as they were."""

    def __init__(self, throttle: LogThrottle) -> None:
        self._throttle = throttle
        self._saved_fd = os.dup(2)
        self._saved_stderr = sys.stderr
        # Python's stderr (logging, tracebacks) keeps writing where fd 2 pointed before; a
        # stderr that is not fd 2 (a test's capture) stays as it is.
        self._python_stderr = None
        if _writes_to_fd_2(sys.stderr):
            self._python_stderr = open(  # noqa: SIM115 (closed in __exit__)
                os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace"
            )
            sys.stderr = self._python_stderr
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._reader = os.fdopen(read_end, "r", encoding="utf-8", errors="replace")
        self._thread = threading.Thread(target=self._relay, name="grpc-core-logs", daemon=True)
        self._thread.start()

    def __enter__(self) -> CoreLogRelay:
        return self

    def __exit__(self, *_: object) -> None:
        os.dup2(self._saved_fd, 2)  # the pipe's last write end closes: the relay reads EOF
        os.close(self._saved_fd)
        self._thread.join(timeout=5)
        self._reader.close()
        sys.stderr = self._saved_stderr
        if self._python_stderr is not None:
            self._python_stderr.close()

    def _relay(self) -> None:
        for line in self._reader:
            self.relay_line(line.rstrip("\n"))

    def relay_line(self, line: str) -> None:
        """Log one line of the core's output (throttled where a client can repeat it)."""
        match = _CORE_LINE.match(line)
        if match is None:
            if line.strip():
                log.warning("%s", line)
            return
        level, message = _LEVELS[match.group(1)], match.group(2)
        for needle, what in _THROTTLED.items():
            if needle in message:
                held_back = self._throttle.admit(needle)
                if held_back is None:
                    return
                more = f" ({held_back} more since the last such line)" if held_back else ""
                log.warning("%s: %s%s", what, message, more)
                return
        log.log(level, "%s", message)


def _writes_to_fd_2(stream: TextIO) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def relay_core_logs(interval_s: float = 10.0) -> CoreLogRelay:
    """Route grpc core's fd-2 output through Python logging (`with relay_core_logs(): …`);
    enter it before configure_logging, which then writes to the moved sys.stderr."""
    return CoreLogRelay(LogThrottle(interval_s))
