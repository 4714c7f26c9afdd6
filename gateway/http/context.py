"""What routes may reach: the app's state, the request id, the headers they read and a
size-limited body (from a Starlette ``Request`` or straight from the ASGI scope)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Receive, Scope

from gateway.errors import InvalidRequestError
from gateway.http.body_budget import MeteredReceive, body_too_large
from gateway.http.request_id import SCOPE_KEY
from gateway.http.state import AppState


def app_state(request: Request) -> AppState:
    return scope_state(request.scope)


def scope_state(scope: Scope) -> AppState:
    """The app's state, from the scope (Starlette puts the app there)."""
    state: AppState = scope["app"].state.vgate  # (typing.cast is a call on every request)
    return state


def request_id(request: Request) -> str:
    return scope_request_id(request.scope)


def scope_request_id(scope: Scope) -> str:
    request_id: str = scope[SCOPE_KEY]
    return request_id


_COMPLETION_HEADERS = frozenset(
    (
        *(b"authorization", b"x-session-id", b"cache-control", b"content-length"),
        *(b"x-vgate-priority", b"x-vgate-explain", b"traceparent"),
    )
)


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class CompletionHeaders:
    """The request headers the completion routes read."""

    authorization: str | None
    session_id: str | None
    cache_control: str | None
    content_length: str | None
    priority: str | None = None
    """``x-vgate-priority``: a later priority the client asks for (checked by the pipeline)."""
    explain: str | None = None
    """``x-vgate-explain``: routing evidence, given when it carries the admin key."""
    traceparent: str | None = None
    """W3C trace context (validated by the pipeline before any use)."""


def completion_headers(headers: list[tuple[bytes, bytes]]) -> CompletionHeaders:
    """:class:`CompletionHeaders` from one pass over the raw header list (ASGI servers
    send names lowercased; the first of repeated headers wins, as in Starlette).

    Starlette's ``request.headers.get`` scans the list again for every name and
    raises and catches a KeyError for every absent one: 6.8% of the gateway's CPU
    under load (py-spy, ``benchmarks.gateway_overhead --profile``).
    """
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in _COMPLETION_HEADERS and name not in found:
            found[name] = value.decode("latin-1")
    return CompletionHeaders(
        found.get(b"authorization"),
        found.get(b"x-session-id"),
        found.get(b"cache-control"),
        found.get(b"content-length"),
        found.get(b"x-vgate-priority"),
        found.get(b"x-vgate-explain"),
        found.get(b"traceparent"),
    )


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    """The whole body from ``receive``, refusing (413) as soon as it is known to exceed
    ``limit`` bytes (``declared``: the request's Content-Length header, if any).

    Bytes are counted as they arrive, so a body without Content-Length (chunked) is
    refused once past the limit, without waiting for or keeping the rest. A client
    that disconnects before the body's end (or is disconnected: ``server.body_timeout_s``)
    gets a 400 nobody reads, never a truncated body handled as if complete."""
    if declared is not None:
        if not declared.isdigit():  # (llhttp checked it, and head_fields.py stripped it)
            raise InvalidRequestError("invalid Content-Length header")
        if int(declared) > limit:
            raise body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: nothing more will come
            raise InvalidRequestError("the connection closed before the request body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if type(receive) is MeteredReceive:  # a large body: charged as it will be decoded
        receive.charge_decoded(body)
    return body
