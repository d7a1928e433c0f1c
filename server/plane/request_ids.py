"""Request ids: the caller's, or one the server makes, so that every scored call can be named.

A call that carries no id (native `PredictRequest.id` / `PredictBatchRequest.id`, v2 `id`, REST
`"id"` or an `X-Request-Id` header) gets one here; the transport answers it in the response's id
field, the capture store writes it beside the call's rows, and feedback posted with it joins.
A stream's messages each get their own.

A made id is 32 lowercase hex digits, 128 bits from `os.urandom`: nothing a client could guess
or collide with. Each thread draws 256 ids' bits with one `getrandom` call and hands them out in
turn: `os.urandom` gives up the GIL around its system call (2.9 µs of wall time a call in one
thread, 0.7 µs of it CPU; docs/serving.md), and on a busy server a thread that gives up the GIL
waits for it behind the others. A fork starts every pool afresh, so parent and child never
share an id; a new thread draws its own.
"""

from __future__ import annotations

import os
import threading

ID_BYTES = 16  # 128 bits: the chance that two of 10¹² ids collide is below 10⁻¹⁴
POOL_IDS = 256  # ids drawn by one getrandom call
_ID_DIGITS = 2 * ID_BYTES


class _Pool(threading.local):
    """A thread's drawn ids as one hex string, the next one's offset, the fork it was drawn in."""

    digits = ""
    offset = 0
    fork = -1


_pool = _Pool()
_fork = 0


def _forked() -> None:  # os.register_at_fork: in the child, every pool is stale
    global _fork
    _fork += 1


os.register_at_fork(after_in_child=_forked)


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex digits."""
    pool = _pool
    offset = pool.offset
    if offset >= len(pool.digits) or pool.fork != _fork:
        pool.digits = os.urandom(ID_BYTES * POOL_IDS).hex()
        pool.fork = _fork
        offset = 0
    pool.offset = offset + _ID_DIGITS
    return pool.digits[offset : offset + _ID_DIGITS]


def request_id(given: str) -> str:
    """The caller's id when it sent one (non-empty), else a fresh one."""
    return given or new_request_id()
