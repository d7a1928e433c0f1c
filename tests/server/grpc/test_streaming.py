"""ReadAhead: every message once, in order, in bounded chunks; source errors after the rest."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bnserve.server.grpc.streaming import ReadAhead
from tests.support.waiting import wait_until


def test_chunks_keep_every_message_in_order() -> None:
    read_ahead = ReadAhead(iter(range(1000)), window=32, max_chunk=10)
    chunks = list(read_ahead.chunks())
    assert [m for chunk in chunks for m in chunk] == list(range(1000))
    assert all(1 <= len(chunk) <= 10 for chunk in chunks)


def test_waiting_messages_are_taken_together() -> None:
    released = threading.Event()

    def source() -> Iterator[int]:
        yield from range(20)
        released.wait(10)  # the stream stays open, nothing more arrives for now

    read_ahead = ReadAhead(source(), window=64, max_chunk=8)
    # all 20 have arrived before the handler looks
    wait_until(lambda: read_ahead._queue.qsize() >= 20, "all 20 messages read ahead", 10)
    chunks = read_ahead.chunks()
    assert [next(chunks), next(chunks), next(chunks)] == [
        list(range(8)),
        list(range(8, 16)),
        list(range(16, 20)),
    ]
    released.set()
    assert list(chunks) == []


def test_source_error_comes_after_the_messages_before_it() -> None:
    def source() -> Iterator[int]:
        yield from range(5)
        raise ValueError("bad bytes in message 5")

    seen = []
    with pytest.raises(ValueError, match="message 5"):
        for chunk in ReadAhead(source(), window=4, max_chunk=3).chunks():
            seen.extend(chunk)
    assert seen == list(range(5))


def test_reader_stops_when_the_consumer_stops() -> None:
    produced = []

    def endless() -> Iterator[int]:
        number = 0
        while True:
            produced.append(number)
            yield number
            number += 1

    read_ahead = ReadAhead(endless(), window=4, max_chunk=2)
    chunks = read_ahead.chunks()
    next(chunks)
    chunks.close()  # the handler ended (e.g. the call was cancelled)
    read_ahead._reader.join(timeout=10)
    assert not read_ahead._reader.is_alive()
    assert len(produced) <= 4 + 2 + 2  # bounded by the window, not endless
