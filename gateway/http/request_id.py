"""``x-request-id`` on every response: the client's, when it sent a sane one, else a new one.

A pure ASGI middleware: it only adds a header to ``http.response.start`` and
never wraps response bodies, so streams pass through it untouched.
"""

from __future__ import annotations

import itertools
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
SCOPE_KEY = "vgate.request_id"
_MAX_LENGTH = 128


class RequestIdMiddleware:
    """Generated ids are a random prefix per process and a counter: unique, and no
    random bytes drawn per request (that cost 2% of the gateway's CPU)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._prefix = f"req_{secrets.token_hex(6)}"
        self._ids = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _from_headers(scope["headers"]) or f"{self._prefix}{next(self._ids):012x}"
        scope[SCOPE_KEY] = request_id
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, encoded)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == HEADER:
            if 0 < len(value) <= _MAX_LENGTH and value.isascii() and value.decode().isprintable():
                return value.decode()
            return None
    return None
