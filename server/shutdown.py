"""What both transports do the same way when the server stops (server/app.py `Server.stop`):

1. new calls are held unanswered (health checks still answer);
2. the accepted calls finish, and the callers, each waiting on a held call, send no more: the
   server waits until none is in flight and no call has come for SHUTDOWN_QUIET_S, within the
   grace less `stop_reserve_s(grace)`;
3. the transport stops taking connections (gRPC: grpc's stop sends GOAWAY; HTTP: the listening
   socket closes);
4. the held calls are answered UNAVAILABLE / 503 with Retry-After and Connection: close. A
   client's retry then goes to a new connection, which is refused: every call ends answered
   or refused, never cut off (CANCELLED, or a connection reset under an HTTP request).

Answering at once instead (step 4 before 3) makes retrying clients call again at once on the
same connection, so calls never stop arriving, and those that arrive after grpc's stop began
are cancelled by grpc core.
"""

from __future__ import annotations

SHUTDOWN_QUIET_S = 0.25  # no new call this long: the callers are waiting on held calls
SHUTTING_DOWN = "server shutting down; retry (another replica will answer)"
RETRY_AFTER_S = 1  # HTTP Retry-After on a refused call, seconds


def stop_reserve_s(grace_s: float) -> float:
    """The part of a shutdown's grace kept for step 3 and 4 and the transports' own stop: a
    quarter of it, at most 1 s."""
    return min(1.0, grace_s / 4)
