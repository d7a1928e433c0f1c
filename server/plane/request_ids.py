"""Request ids: the caller's, or one the server makes, so that every scored call can be named.

A call that carries no id (native `PredictRequest.id` / `PredictBatchRequest.id`, v2 `id`, REST
`"id"` or an `X-Request-Id` header) gets one here; the transport answers it in the response's id
field, the capture store writes it beside the call's rows, and feedback posted with it joins.
A stream's messages each get their own.

A made id is 32 lowercase hex digits, 128 bits from `os.urandom`: no state, no lock, nothing a
fork or a second process could repeat, and nothing a client could guess or collide with. It
costs one `getrandom` call and a hex format on the request path (docs/contracts.md has the
measurement).
"""

from __future__ import annotations

from os import urandom

ID_BYTES = 16  # 128 bits: the chance that two of 10¹² ids collide is below 10⁻¹⁴


def new_request_id() -> str:
    """A fresh id: 32 lowercase hex digits."""
    return urandom(ID_BYTES).hex()


def request_id(given: str) -> str:
    """The caller's id when it sent one (non-empty), else a fresh one."""
    return given or new_request_id()
