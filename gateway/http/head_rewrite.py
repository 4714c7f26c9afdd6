"""The one rewrite of request bytes the gateway makes: an ``Upgrade`` header renamed
in a request's head, so that llhttp serves the request as HTTP/1.1 with its body
(see "Protocol upgrades" in :mod:`gateway.http.connections`). Nothing past the
head's end is ever touched: a body's bytes renamed would change its length, and the
rest of it would be read as the next request.

An upgrade the rewrite misses (spelt in mixed case, or in a head pipelined behind
another in the same read) stops the parser: that request gets
:func:`refuse_upgrade`'s 400, and the connection is closed.
"""

from __future__ import annotations

import re

from starlette.types import Receive, Scope, Send

from gateway.errors import error_body

UPGRADE_REFUSED = "Protocol upgrades are not supported; send the request without them."
_UPGRADE_REFUSAL = error_body(
    UPGRADE_REFUSED, "invalid_request_error", None, "invalid_http_request"
)

_UPGRADE_HEADER = re.compile(rb"\r\nupgrade[ \t]*:", re.IGNORECASE)
_IGNORED_UPGRADE = b"\r\nx-ignored-upgrade:"
"""What an ``Upgrade`` header becomes: a name the gateway and llhttp ignore."""


def without_upgrade(data: bytes, before: bytes) -> bytes:
    """``data`` with any ``Upgrade`` header of the head it holds renamed, and nothing
    after the head's end touched (a body's bytes renamed would change its length:
    the rest of it would be read as the next request). ``before``: the last bytes of
    the head's previous read, when this read continues one (its end may straddle
    them: ``\r\n`` there, ``\r\n`` here)."""
    end = (before + data).find(b"\r\n\r\n")
    head_length = len(data) if end < 0 else max(0, end + 2 - len(before))
    head = data[:head_length]
    return _UPGRADE_HEADER.sub(_IGNORED_UPGRADE, head) + data[head_length:]


async def refuse_upgrade(scope: Scope, receive: Receive, send: Send) -> None:
    """The application of a request whose upgrade stopped the parser, when it waited
    behind others (pipelined): its 400 in its turn, after their answers, then the close."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(_UPGRADE_REFUSAL)),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": _UPGRADE_REFUSAL, "more_body": False})
