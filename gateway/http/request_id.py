"""The gateway's outermost layer: ``x-request-id`` on every response, trailing slashes
dropped from paths, and large request bodies metered against the worker's budget.

``x-request-id``: the client's, when it sent a sane one, else a new one.

Trailing slash: ``POST /v1/chat/completions/`` is served exactly as
``/v1/chat/completions`` (the path is rewritten before any routing, hot routes
included), instead of FastAPI's 307 redirect, whose ``Location`` is built from
the client's ``Host`` header. For paths without one it costs a single comparison.

Body budget: see :mod:`gateway.http.body_budget`; bytes are released when the
request's response has ended.

A pure ASGI middleware: it only adds a header to ``http.response.start`` and
never wraps response bodies, so streams pass through it untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.body_budget import BodyBudget
from gateway.observability.opaque_ids import OpaqueIds

HEADER = b"x-request-id"
SCOPE_KEY = "vgate.request_id"
_MAX_LENGTH = 128
_CONTENT_LENGTH = b"content-length"
_BODILESS = frozenset(("GET", "HEAD", "OPTIONS", "DELETE"))


class RequestIdMiddleware:
    """Generated ids are ``req_`` and 96 opaque bits (:class:`OpaqueIds`): unique, and
    no count of the process's traffic (a counter told every client how many requests
    were served between two of its own).

    ``budget``: the worker's body budget (None: bodies are not metered)."""

    def __init__(self, app: ASGIApp, budget: BodyBudget | None = None) -> None:
        self.app = app
        self._budget = budget
        self._ids = OpaqueIds("req_")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"][-1:] == "/":
            _drop_trailing_slash(scope)
        client_id, declared = _scan_headers(scope["headers"])
        request_id = client_id or self._ids.next()
        scope[SCOPE_KEY] = request_id
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, encoded)]
            await send(message)

        budget = self._budget
        if budget is None or not budget.meters(declared, scope["method"] not in _BODILESS):
            await self.app(scope, receive, send_with_id)
            return
        metered = budget.meter(receive, declared)
        try:
            await self.app(scope, metered, send_with_id)
        finally:
            metered.release()


def _drop_trailing_slash(scope: Scope) -> None:
    """``/a/b/`` (or ``/a/b//``) becomes ``/a/b``; ``/`` stays."""
    path: str = scope["path"]
    stripped = path.rstrip("/") or "/"
    if stripped == path:
        return
    scope["path"] = stripped
    raw: bytes | None = scope.get("raw_path")
    if raw is not None:
        scope["raw_path"] = raw.rstrip(b"/") or b"/"


def _scan_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, int | None]:
    """The client's request id (None: absent or not sane) and the declared body length
    (None: absent or not a number), in one pass over the raw headers."""
    request_id: str | None = None
    seen_id = False
    declared: int | None = None
    for name, value in headers:
        if name == _CONTENT_LENGTH:
            declared = int(value) if value.isdigit() and len(value) <= 18 else None
        elif name == HEADER and not seen_id:
            seen_id = True
            if 0 < len(value) <= _MAX_LENGTH and value.isascii() and value.decode().isprintable():
                request_id = value.decode()
    return request_id, declared
