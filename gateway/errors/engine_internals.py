"""What of an engine's error message is the engine's own business, kept from clients.

An engine's error text is written for its operator, not for the gateway's tenants. A
5xx from vLLM is ``str()`` of whatever Python exception it hit: a traceback, file
paths of the engine's host, addresses of its peers, another request's details. None
of that is the client's, so a 5xx's message is replaced whole
(:func:`engine_failure_message`); its status, type and code stay, and the engine's
own log keeps the text. A 4xx's message is the client's to read (the context length
it went beyond, the parameter it got wrong), so it is kept, less what is internal
(:func:`without_internals`): a traceback from its first line on, URLs and network
addresses (``<engine>``), absolute file paths (``<path>``). Pure functions over
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
