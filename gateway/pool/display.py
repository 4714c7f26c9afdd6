"""How an engine is shown: its URL without credentials, and a short stable id.

An endpoint may carry credentials (``http://user:password@host:8000``, sent to
the engine as HTTP basic auth); the full URL is what the gateway connects with,
and nothing else. Everything that shows an engine to a person or a program —
logs, metric labels, ``/ready``, ``/sd/engines``, CLI output — shows
:func:`display_url` (userinfo, query and fragment dropped), and the
``x-vgate-engine`` debug header only :func:`engine_id`.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

ENGINE_ID_CHARS = 8


def display_url(url: str) -> str:
    """``url`` as ``scheme://host[:port][/path]``: no userinfo, query or fragment.

    A URL without those parts comes back unchanged (``http://10.0.0.5:8000``)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, netloc(url), parts.path, "", ""))


def netloc(url: str) -> str:
    """``host[:port]`` of ``url``, without userinfo (what Prometheus calls a target).

    Everything up to the last ``@`` of the authority is userinfo (RFC 3986), so a
    password containing ``@`` is dropped whole."""
    return urlsplit(url).netloc.rpartition("@")[2]


def engine_id(url: str) -> str:
    """A short id for the engine at ``url``: the first hex digits of the SHA-256 of its
    :func:`display_url`, so the same engine has the same id on every gateway, and
    the id tells nothing about its credentials (they are not hashed)."""
    digest = hashlib.sha256(display_url(url).encode()).hexdigest()
    return digest[:ENGINE_ID_CHARS]
