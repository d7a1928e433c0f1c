"""What every call leaves behind for operators, whichever transport answered it: its metrics,
its access-log line and its trace span, from one `CallObserver` that both transports call.

A transport opens the call's span (`observer.span`), times the call once, and hands the result
to `observer.observe` with a `CallFacts` that reads the model, version, request id and peer
from its own objects only when a line is written. The gRPC side is
server/grpc/observing.py's interceptor, the HTTP side server/rest/server.py's `_wrap`.

ServerMetrics.observe_call resolves the metric children once per (method, code, model), so a
call costs a dict lookup, a counter increment and a histogram observation
(bench/metrics_overhead.py measures it). The model label takes only names this server has
answered for, so a client cannot grow the label set by inventing model names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

from bnserve.server.observability.logs import LogThrottle
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.observability.tracing import Tracing

log = logging.getLogger(__name__)
access_log = logging.getLogger("server.access")


class CallFacts(Protocol):
    """What a transport knows of one answered call beyond its method, code and duration."""

    def asked_model(self) -> str:
        """The model name the request named ("" when none)."""

    def answered_model(self) -> str:
        """The model name the answer carries ("" when none: refused, or no model call)."""

    def version(self) -> str:
        """The model version answered (else asked; "" when none)."""

    def request_id(self) -> str:
        """The caller's request id ("" when none)."""

    def peer(self) -> str:
        """The caller's address as grpc writes it: "ipv4:127.0.0.1:50123"."""


class _ModelLabel:
    """The model label of a call: a name this server has answered for, else "" (bounded)."""

    def __init__(self) -> None:
        self.served: set[str] = set()

    def of(self, facts: CallFacts) -> str:
        answered = facts.answered_model()
        if answered:
            self.served.add(answered)
            return answered
        asked = facts.asked_model()
        return asked if asked in self.served else ""


class CallObserver:
    """Counts and times every call, writes the access log (one JSON line for a share
    `access_log_sample` of calls, 0: none, with method, model, version, code, ms, id and peer)
    and, with `tracing`, makes each call an OpenTelemetry span. Each part may be off (metrics
    None, sample 0, tracing None)."""

    def __init__(
        self,
        metrics: ServerMetrics | None,
        access_log_sample: float = 0.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.metrics = metrics
        self.tracing = tracing
        self._sample = access_log_sample
        self._models = _ModelLabel()
        self._unimplemented_log = LogThrottle(10.0)

    def span(
        self, method: str, headers: Sequence[tuple[str, Any]] | None, system: str
    ) -> contextlib.AbstractContextManager[Any]:
        """The call's span, current while its handler runs; headers (lower-case names) may
        carry the caller's W3C traceparent; system: "grpc" or "http"."""
        if self.tracing is None:
            return contextlib.nullcontext()
        return self.tracing.server_span(method, headers, system)

    def observe(
        self,
        method: str,
        code: grpc.StatusCode,
        seconds: float,
        facts: CallFacts,
        http_status: int | None = None,
    ) -> None:
        """Record one answered call: method, its status (the gRPC code; an HTTP answer also
        its HTTP status), seconds from arrival to answer."""
        model = self._models.of(facts)
        if self.metrics is not None:
            self.metrics.observe_call(method, code, seconds, model)
        if self._sample and (self._sample >= 1 or random.random() < self._sample):
            _write_access_line(method, model, code, seconds, facts)
        if self.tracing is not None:
            self.tracing.end_call(code.name, model, http_status)

    def count_unimplemented(self, method: str) -> None:
        """A call to a method no service serves (answered UNIMPLEMENTED), logged at most once
        every 10 s."""
        if self.metrics is not None:
            self.metrics.unimplemented.inc()
        held_back = self._unimplemented_log.admit("unimplemented")
        if held_back is not None:
            more = f" ({held_back} more since the last line)" if held_back else ""
            log.warning("call to an unimplemented method %.100r%s", method, more)


def _write_access_line(
    method: str, model: str, code: grpc.StatusCode, seconds: float, facts: CallFacts
) -> None:
    fields = {
        "method": method,
        "model": model,
        "version": facts.version(),
        "code": code.name,
        "ms": round(seconds * 1000, 3),
        "id": facts.request_id(),
        "peer": facts.peer(),
    }
    access_log.info(json.dumps(fields, separators=(",", ":")), extra={"fields": fields})
