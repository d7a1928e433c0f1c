"""The logger aiohttp's connection handler writes to (its `logger`): a request aiohttp cannot parse
(a control character in a header, a line too long, a broken request line) is the client's fault
and is answered 400 by aiohttp itself, so it is one throttled warning line naming the peer and
the reason, not an ERROR with a traceback. Anything else (a fault of the server) goes to
aiohttp's own logger with its traceback, as before.

Found by tests/server/test_rest_fuzz.py once its headers held any latin-1 text: a DEL (0x7f) in
a header value logged `ERROR aiohttp.server: Error handling request` and a traceback per call.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from bnserve.server.observability.logs import LogThrottle

log = logging.getLogger(__name__)
aiohttp_log = logging.getLogger("aiohttp.server")
THROTTLE_S = 10.0  # a client can send malformed requests at will: one line per 10 s


class ProtocolLog:
    """What aiohttp's RequestHandler calls on its `logger`: `debug` and `exception`."""

    def __init__(self, throttle_s: float = THROTTLE_S) -> None:
        self._throttle = LogThrottle(throttle_s)

    def debug(self, message: str, *args: Any, **kwargs: Any) -> None:
        aiohttp_log.debug(message, *args, **kwargs)

    def exception(self, message: str, *args: Any, exc_info: Any = None, **kwargs: Any) -> None:
        if not isinstance(exc_info, HttpProcessingError):
            aiohttp_log.exception(message, *args, exc_info=exc_info, **kwargs)
            return
        held_back = self._throttle.admit("malformed")
        if held_back is None:
            return
        peer = args[0] if args else "?"  # aiohttp: "Error handling request from %s", remote
        reason = (exc_info.message or type(exc_info).__name__).strip().splitlines()[0]
        more = f" ({held_back} more since the last line)" if held_back else ""
        log.warning(
            "malformed HTTP request from %s answered %s: %s%s",
            peer,
            exc_info.code or 400,
            reason.rstrip(":"),
            more,
        )
