"""Signals of a serving process or supervisor: SIGINT/SIGTERM stop, SIGHUP reloads."""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import time


class SignalFlags:
    """SIGINT/SIGTERM ask to stop, SIGHUP to reload. The handlers only count; the main loop
    sleeps in select() on a self-pipe that Python's C-level handler writes to (set_wakeup_fd),
    so no lock is ever taken inside a handler: an Event.set() there deadlocks when the signal
    lands while the main thread is inside that Event's own wait()."""

    def __init__(self) -> None:
        self._stops = 0  # stop signals received
        self._reloads = 0  # reload signals not yet acted on
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signal_number, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)

    def _on_stop(self, *_: object) -> None:
        self._stops += 1

    def _on_reload(self, *_: object) -> None:
        self._reloads += 1

    def _sleep(self, timeout_s: float | None) -> None:
        """Until a signal arrives (or timeout_s passes); its Python handler has run on return."""
        select.select([self._reader], [], [], timeout_s)
        with contextlib.suppress(BlockingIOError):
            while self._reader.recv(64):
                pass

    def wait(self) -> str:
        """Block until a signal: "stop" or "reload" (stop wins)."""
        while True:
            if self._stops:
                return "stop"
            if self._reloads:
                self._reloads = 0
                return "reload"
            self._sleep(None)

    def poll(self, timeout_s: float) -> tuple[int, bool]:
        """Sleep until a signal (or timeout_s); (stop signals so far, whether a reload was
        asked since the last call)."""
        self._sleep(timeout_s)
        reload, self._reloads = self._reloads > 0, 0
        return self._stops, reload

    def wait_for_stop(self, timeout_s: float) -> bool:
        """After the first stop signal: wait up to timeout_s for a second (True if one came)."""
        deadline = time.monotonic() + timeout_s
        while self._stops < 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._sleep(remaining)
        return True
