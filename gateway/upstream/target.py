"""An engine URL, parsed once, and the bytes of one request to it.

The lean client (:mod:`gateway.upstream.lean`) writes each request as one bytes
object: the request line, ``Host``, ``Accept-Encoding: identity`` and basic auth
(from the URL's userinfo, as aiohttp sends it) are made once per URL
(:class:`Target`); per request only the gateway's own headers, ``Content-Length``
and the body are added (:func:`request_bytes`). Nothing here does I/O.

``Accept-Encoding: identity``: a request without the header accepts any content
coding (RFC 9110, 12.5.3), and the gateway relays and caches bodies as they come;
an engine that encodes its answer all the same is refused
(:mod:`gateway.upstream.connection`).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from gateway.errors import UpstreamError

_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
"""Characters a request target keeps as written (RFC 3986 ``pchar``, ``/`` and escapes)."""
_IDENTITY = b"Accept-Encoding: identity\r\n"
"""Every request's: answers come as they are, never gzip (see the module's text)."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where one engine URL's requests go and how their head starts."""

    origin: tuple[str, str, int]
    """``(scheme, host, port)``: connections are pooled per origin."""
    host: str
    port: int
    tls: bool
    post_head: bytes
    """``POST <path> HTTP/1.1``, ``Host`` and ``Accept-Encoding: identity``, each line
    CRLF-terminated (:func:`get_request_bytes` makes a GET of it)."""
    basic_auth: bytes = field(repr=False)
    """An ``Authorization: Basic`` line from the URL's userinfo, or empty."""

    @classmethod
    def parse(cls, url: str) -> Target:
        """``url`` (``http(s)://[user:password@]host[:port]/path[?query]``) as a target;
        ValueError when it is not one."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {parts.scheme}://{parts.hostname}")
        tls = scheme == "https"
        port = parts.port or (443 if tls else 80)
        authority = parts.netloc.rpartition("@")[2]
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_PATH_SAFE + "?")
        head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("ascii") + _IDENTITY
        auth = b""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = b"Authorization: Basic " + base64.b64encode(pair.encode("latin-1")) + b"\r\n"
        return cls((scheme, parts.hostname, port), parts.hostname, port, tls, head, auth)


def request_bytes(target: Target, headers: Mapping[str, str], body: bytes) -> bytes:
    """The whole POST request: head, ``headers``, ``Content-Length`` and ``body``.

    A header value holding CR or LF would end the head early (header injection);
    such a request is refused, as aiohttp refuses it.
    """
    return b"".join(
        (
            target.post_head,
            _header_lines(target, headers),
            b"Content-Length: %d\r\n\r\n" % len(body),
            body,
        )
    )


def get_request_bytes(target: Target, headers: Mapping[str, str]) -> bytes:
    """A GET request without a body (health probes, metrics scrapes): the target's
    head with ``GET`` for ``POST``, then ``headers``, checked as :func:`request_bytes`
    checks them."""
    return b"".join((b"GET " + target.post_head[5:], _header_lines(target, headers), b"\r\n"))


def _header_lines(target: Target, headers: Mapping[str, str]) -> bytes:
    """``headers`` and the URL's basic auth (unless ``headers`` has its own) as lines;
    :class:`UpstreamError` when a value holds a line break."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise UpstreamError("a header to the engine holds a line break")
    auth = target.basic_auth if target.basic_auth and "Authorization" not in headers else b""
    return auth + lines.encode()
