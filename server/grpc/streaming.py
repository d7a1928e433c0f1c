"""Read a request stream ahead on its own thread and hand it over in chunks.

A bidirectional stream handled one message at a time pays a whole model run and a read/write
round trip per example. Reading ahead lets the handler take every message that has already
arrived (up to a bound) and score them in one run, while answers still go out one per message,
in order.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

Message = TypeVar("Message")


class _End:
    """Queued after the source's last message."""


class _Failure:
    """Queued in place of the message the source raised on."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = _End()


class ReadAhead(Generic[Message]):
    """Chunks of already-arrived messages from `source`, read by a daemon thread.

    At most `window` messages wait unread by the handler (back-pressure on the client); a chunk
    holds at most `max_chunk`. An exception raised by `source` is re-raised by `chunks()` after
    the messages before it.
    """

    def __init__(self, source: Iterator[Message], *, window: int, max_chunk: int) -> None:
        self._source = source
        self._max_chunk = max_chunk
        self._queue: queue.Queue[Message | _End | _Failure] = queue.Queue(maxsize=window)
        self._stopped = threading.Event()
        self._reader = threading.Thread(target=self._read, name="stream-read-ahead", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self._source:
                if not self._put(message):
                    return
        except BaseException as error:  # handed to the handler thread, which reports it
            self._put(_Failure(error))
            return
        self._put(_END)

    def _put(self, item: Message | _End | _Failure) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def chunks(self) -> Iterator[list[Message]]:
        """Block for the next message, then take what else has arrived, up to max_chunk."""
        held: _End | _Failure | None = None  # an end or failure taken while filling a chunk
        try:
            while True:
                item = self._queue.get() if held is None else held
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    raise item.error
                chunk = [item]
                while len(chunk) < self._max_chunk:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(item, (_End, _Failure)):
                        held = item
                        break
                    chunk.append(item)
                yield chunk
        finally:
            self._stopped.set()
