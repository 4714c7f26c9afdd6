"""The one rewrite of request bytes the gateway makes: an ``Upgrade`` header renamed
in a request's head, so that llhttp serves the request as HTTP/1.1 with its body
(see "Protocol upgrades" in :mod:`gateway.http.connections`). Nothing past the
head's end is ever touched: a body's bytes renamed would change its length, and the
rest of it would be read as the next request.
"""

from __future__ import annotations

import re

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
