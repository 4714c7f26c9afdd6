"""The ``server.*`` limits each connection works under (enforced by
:class:`gateway.http.connections.LimitedHttpToolsProtocol`, which re-exports this), and
the answer it writes itself to a head it refuses (:func:`refusal_answer`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.config.sections import ServerSettings
from gateway.errors import error_body
from gateway.observability.opaque_ids import OpaqueIds

log = logging.getLogger("vgate.connections")

OVER_CAP_RELOG_S = 60.0


class OverCapLog:
    """The warning that new connections get 503 over ``server.max_connections``: at the
    first crossing of the cap, then at most once per :data:`OVER_CAP_RELOG_S` with how
    many crossings there were since. Logged at every crossing, a client keeping the
    worker at its cap (one connection closed, one more opened) wrote a line each time."""

    __slots__ = ("_last", "_since")

    def __init__(self) -> None:
        self._last = -math.inf
        self._since = 0

    def crossed(self, now: float) -> None:
        if now - self._last < OVER_CAP_RELOG_S:
            self._since += 1
            return
        more = f" ({self._since} more crossings since)" if self._since else ""
        log.warning("over server.max_connections: new connections get 503%s", more)
        self._last, self._since = now, 0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The ``server.*`` limits one connection works under."""

    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    max_connections: int
    over_cap: OverCapLog = field(default_factory=OverCapLog, compare=False)
    refusal_ids: OpaqueIds = field(default_factory=lambda: OpaqueIds("req_"), compare=False)
    """The ``x-request-id`` of answers written before any request reached the app (a
    head refused, a head not complete in time): every answer carries one."""

    @classmethod
    def from_settings(cls, server: ServerSettings) -> ConnectionLimits:
        return cls(
            server.max_header_bytes,
            server.header_timeout_s,
            server.body_timeout_s,
            server.send_timeout_s,
            server.max_connections,
        )


def refusal_answer(
    status: int,
    message: str,
    code: str,
    default_headers: Iterable[tuple[bytes, bytes]],
    request_id: str,
) -> bytes:
    """The whole answer to a request head the connection refused before any request
    reached the application: ``status`` with an OpenAI error, the server's default
    headers, an ``x-request-id`` (every answer carries one) and ``connection: close``."""
    body = error_body(message, "invalid_request_error", None, code)
    content = [STATUS_LINE[status]]
    for name, value in default_headers:
        content.extend((name, b": ", value, b"\r\n"))
    content.extend(
        (
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"x-request-id: %s\r\n" % request_id.encode(),
            b"connection: close\r\n\r\n",
            body,
        )
    )
    return b"".join(content)
