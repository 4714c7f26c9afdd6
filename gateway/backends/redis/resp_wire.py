"""The RESP wire format the gateway's Redis client speaks (:mod:`gateway.backends.redis.resp`):
commands encoded, replies parsed, and the reply types a call may accept."""

from __future__ import annotations

from typing import Any

from gateway.errors import StoreUnavailable

OK = b"+OK\r\n"
NIL = b"$-1\r\n"

ANY = b""
"""Accept every reply type (generic calls: tests, scripts of any result)."""
BULK = b"$"
"""A bulk string or nil (GET, a script returning a string)."""
STATUS = b"+"
"""A status reply (SET, AUTH, SELECT: ``+OK``)."""
ERROR = ord("-")


class RedisReplyError(StoreUnavailable):
    """Redis answered with an error reply (``-ERR ...``)."""


class Incomplete(Exception):
    """The buffer does not hold a whole reply yet."""


def bulk(data: bytes) -> bytes:
    """``data`` as one RESP bulk string (one argument of a command)."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_command(args: tuple[bytes | str | int, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(bulk(arg if isinstance(arg, bytes) else str(arg).encode()))
    return b"".join(parts)


def parse_reply(buffer: bytes | bytearray, start: int) -> tuple[Any, int]:
    """One reply from ``buffer[start:]`` and where the next begins; :class:`Incomplete`
    if it has not all arrived. Error replies are returned as :class:`RedisReplyError`.
    Bytes that are not RESP raise :class:`StoreUnavailable` or :class:`ValueError`."""
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise Incomplete
    kind, line = buffer[start : start + 1], buffer[start + 1 : end]
    after = end + 2
    if kind == b":":
        return int(line), after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            raise Incomplete
        return bytes(buffer[after : after + size]), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            item, after = parse_reply(buffer, after)
            items.append(item)
        return items, after
    if kind == b"+":
        return bytes(line), after
    if kind == b"-":
        return RedisReplyError(bytes(line).decode("utf-8", "replace")), after
    raise StoreUnavailable(f"unexpected Redis reply type {kind!r}")
