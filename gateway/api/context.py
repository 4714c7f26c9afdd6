"""What routers may reach: the app's state, the request id and a size-limited body."""

from __future__ import annotations

from typing import cast

from starlette.requests import Request

from gateway.errors import InvalidRequestError, PayloadTooLargeError
from gateway.request_id import SCOPE_KEY
from gateway.state import AppState


def app_state(request: Request) -> AppState:
    return cast(AppState, request.app.state.vgate)


def request_id(request: Request) -> str:
    return cast(str, request.scope[SCOPE_KEY])


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequestError("invalid Content-Length header")
        if int(declared) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # http.disconnect: nothing more will come
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")
