"""What of an engine's error message is the engine's own business, kept from clients.

An engine's error text is written for its operator, not for the gateway's tenants. A
5xx from vLLM is ``str()`` of whatever Python exception it hit: a traceback, file
paths of the engine's host, addresses of its peers, another request's details. None
of that is the client's, so a 5xx's message is replaced whole
(:func:`engine_failure_message`); its status, type and code stay, and the engine's
own log keeps the text. A 4xx's message is the client's to read (the context length
it went beyond, the parameter it got wrong), so it is kept, less what is internal
(:func:`without_internals`): a traceback from its first line on, URLs and network
addresses (``<engine>``), absolute file paths (``<path>``), and every key the gateway
sends engines (:func:`without_secrets`: an engine that echoes the request's
``Authorization`` in its error would hand the tenant the engine's key). Pure functions over
untrusted text, each regular expression linear in what it reads; part of
:mod:`gateway.errors`, so nothing else of ours is imported here.
"""

from __future__ import annotations

import re

TRACEBACK = "Traceback (most recent call last)"
"""Where a Python traceback begins: the message is cut there."""

_ADDRESSES = re.compile(
    r"(?i)\b(?:https?|unix|tcp|redis|rediss|grpc)://[^\s\"'<>]+"  # a URL, credentials too
    r"|\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"  # an IPv4 address, its port too
    r"|\[[0-9a-f:.%]{2,64}\](?::\d{1,5})?"  # a bracketed IPv6 address
    r"|\b(?:localhost|[a-z][\w-]{0,62}(?:\.[\w-]{1,63}){1,8}):\d{1,5}\b"  # host:port
)
"""Where an engine or its peers are (each written ``<engine>``)."""
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/<>-])/(?:[\w.@+~-]+/)+[\w.@+~-]*")
"""A file path of two parts or more from the root (``/opt/vllm/x.py``), not a relative
one nor a model name (``org/model``)."""
SECRET_MARK = "<engine-key>"
"""What an engine key in an engine's message is written as."""


def engine_failure_message(status: int) -> str:
    """The message a client gets for an engine's 5xx, whatever the engine said."""
    return (
        f"The engine failed while handling this request (HTTP {status}); the details are "
        "in the engine's log."
    )


def without_internals(message: str, limit: int) -> str:
    """``message`` cut to ``limit`` characters (the last word, cut, dropped whole) and
    before any traceback, with URLs and network addresses written ``<engine>`` and
    absolute file paths ``<path>``."""
    if len(message) > limit:
        message = message[:limit]
        if not message[-1].isspace():  # a word cut short (a path, an address) goes
            words = message.rsplit(None, 1)
            message = words[0] if len(words) == 2 else ""
    traceback = message.find(TRACEBACK)
    if traceback >= 0:
        message = message[:traceback].rstrip(" \t\r\n:;,-")
    message = _ADDRESSES.sub("<engine>", message)
    return _ABSOLUTE_PATH.sub("<path>", message)[:limit]


MAX_FIELD = 256
"""The longest ``param``, ``code`` or ``type`` of an engine's error relayed (characters)."""


def engine_field(value: object, secrets: tuple[str, ...] = ()) -> str | None:
    """An engine error's ``param``, ``code`` or ``type`` as a client may see it: a string
    cleaned as a message is (:func:`without_secrets`, :func:`without_internals`) and cut
    to :data:`MAX_FIELD`; None for anything else, or nothing left (an engine relays
    whatever it likes there: a path, an address, a key, a megabyte)."""
    if not isinstance(value, str):
        return None
    kept = without_secrets(value, secrets, MAX_FIELD + 1)  # one more: a cut word goes whole
    cleaned = without_internals(kept, MAX_FIELD)
    return cleaned or None


def without_secrets(message: str, secrets: tuple[str, ...], limit: int) -> str:
    """The first ``limit`` characters of ``message`` with every occurrence of each of
    ``secrets`` (the engines' keys) written :data:`SECRET_MARK`, overlapping ones as
    one. Read only up to ``limit`` plus the longest secret, so that one that begins
    before ``limit`` is seen whole; text from ``limit`` on is never shown (shifted left
    by a shorter mark, part of a secret could come into view). Linear in ``limit`` per
    secret; called on error paths only (``message`` itself, cut, when none is in it)."""
    if not secrets:
        return message[:limit]
    text = message[: limit + max(map(len, secrets))]
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret) if secret else -1
        while 0 <= start < limit:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text[:limit]
    parts: list[str] = []
    shown = 0
    for start, end in sorted(spans):
        if start >= shown:
            parts += (text[shown:start], SECRET_MARK)
        shown = max(shown, end)  # an overlapping one extends the hidden run
    if shown < limit:
        parts.append(text[shown:limit])
    return "".join(parts)
