"""What a connection accepted beyond ``server.max_connections`` gets: one 503 in
OpenAI's error shape, ``Retry-After`` and ``connection: close`` (the connections
already open are not affected; :mod:`gateway.http.connections` counts them, and wraps
this in :class:`~gateway.http.request_id.RequestIdMiddleware`: the answer bypasses the
app's stack, and the SDKs' errors read their ``request_id`` from ``x-request-id``)."""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from gateway.errors import error_body

TOO_MANY_CONNECTIONS = error_body(
    "This gateway process has too many open connections; retry shortly.",
    "service_unavailable",
    None,
    "too_many_connections",
)


async def too_many_connections(scope: Scope, receive: Receive, send: Send) -> None:
    """The application of a connection accepted beyond ``max_connections``."""
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(TOO_MANY_CONNECTIONS)),
                (b"retry-after", b"1"),
                (b"retry-after-ms", b"1000"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": TOO_MANY_CONNECTIONS, "more_body": False})
