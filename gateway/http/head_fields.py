"""The request head's fields that decide how it is read, checked once, as llhttp parses
them: every later reader sees the same values.

llhttp refuses most smuggling heads by itself (two ``Content-Length`` fields, a sign
or a non-digit in one, ``Content-Length`` with ``Transfer-Encoding``, obs-fold lines,
control bytes in a value: a 400 and the close), but it leaves three things to the server:

- **Whitespace after a field's value.** llhttp drops it before the value, not after:
  ``Content-Length: 81 `` reached the application as ``"81 "``, and each reader of the
  length (the body budget, ``read_body``) had its own special case to strip it. The
  length is stripped here, once, as its field is parsed. (``Expect: 100-continue ``
  got no ``100 Continue`` at all: the client waited for it, then for its timeout.)
- **Host** (RFC 9112 §3.2): a server MUST answer 400 to an HTTP/1.1 request without a
  ``Host`` field, and to any request with more than one. Counted as the fields are
  parsed (one integer per request), checked when the head is complete.
- **Expect: 100-continue from an HTTP/1.0 client** (RFC 9110 §10.1.1): a server MUST
  NOT send it a ``100 Continue``; uvicorn did. The expectation is ignored.

And things llhttp lets through that the gateway refuses:

- **A transfer coding other than** ``chunked`` (``gzip, chunked``; RFC 9112 §6.1: 501):
  the body was read as if it were not encoded (or, with no ``chunked`` last, refused
  only once the application had started).

- **More than** :data:`MAX_HEADER_FIELDS` **fields** (431). ``server.max_header_bytes``
  bounds a head's bytes, not its fields: 64 KiB of ``a:b`` lines made 13,102 of them,
  1.3 MB of Python objects held for as long as the request (1.3 GB for 1,024 such
  requests at once, no key needed), and every reader of the headers walks them all.
- **HTTP/0.9** (``GET /path`` and nothing else): llhttp hands it on as version 0.9, which
  ASGI does not have, with no Host and no fields; no client of an OpenAI API sends it.

A refused head raises :class:`RefusedHead` from the parser's callback, which ends the
parse: :class:`gateway.http.connections.LimitedHttpToolsProtocol` answers it as it
answers bytes that are not HTTP (in its turn when requests before it are still being
answered), with the exception's message. Nothing of it reaches the application.

A Host among a chunked body's trailers counts for nothing; the trailers themselves never
reach the application (uvicorn appended them to the request's headers, which routes had
already read, or read later), and are not kept at all (:class:`DroppedFields`): in a list
of their own, 64 KiB of tiny ones held 1.4 MB per idle connection, no key needed.

Per header this costs a set lookup where uvicorn's own ``on_header`` (which this
replaces) made one comparison; the lookup computes the name's hash, which bytes keep,
so the routes' own lookups of the same names (``completion_headers``) no longer do.
Measured on the OpenAI SDK's 16 fields, parse and the two header scans every
completion makes: +0.1 to +0.2 µs (4.3 µs before). Per request: three comparisons, the
version read (~0.2 µs: every version but 1.1 is checked) and an empty list. No pass over
the headers is added.
"""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HOST = b"host"
_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_CHECKED = frozenset((_HOST, _CONTENT_LENGTH, _TRANSFER_ENCODING, b"expect"))
_OWS = b" \t"
MAX_HEADER_FIELDS = 100
"""Header fields one request head may have (Apache's ``LimitRequestFields``); the OpenAI
SDKs send about 15."""
INVALID_HTTP = "Invalid HTTP request received."
_CODING_MESSAGE = "Only Transfer-Encoding: chunked is supported; send the body unencoded."
"""uvicorn's message for bytes that are not HTTP."""


class RefusedHead(Exception):
    """A request head the gateway refuses with ``status`` (and an OpenAI error with the
    message and ``code``), then the close."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_http_request"):
        Exception.__init__(self, message)
        self.status = status
        self.code = code


class DroppedFields(list[tuple[bytes, bytes]]):
    """Where the fields parsed after a head (a chunked body's trailers) go: nowhere. One
    per connection, always empty."""

    __slots__ = ()

    def append(self, field: tuple[bytes, bytes]) -> None:
        """Drop ``field``."""


class FieldCheckingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the head's framing fields checked (module
    docstring). ``_hosts``: the ``Host`` fields of the head being parsed (and of any
    trailers after it, counted and then forgotten: the subclass resets it when the
    message is complete)."""

    _hosts: int = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _CHECKED:  # (one lookup: the name's hash, kept, serves later readers)
            if name == _HOST:
                self._hosts += 1
            elif name == _CONTENT_LENGTH:
                value = value.rstrip(_OWS)  # llhttp checked the digits, kept what follows
            elif name == _TRANSFER_ENCODING:
                if value.strip(_OWS).lower() != b"chunked":
                    raise RefusedHead(_CODING_MESSAGE, 501, "unsupported_transfer_encoding")
            elif value.rstrip(_OWS).lower() == b"100-continue":  # (Expect)
                self.expect_100_continue = True
        self.headers.append((name, value))

    def check_fields(self) -> None:
        """The head's checks beyond counting: called only when it has no or several
        ``Host`` fields, too many fields, asks for ``100 Continue``, or is not kept
        alive (any version but 1.1, or ``Connection: close``). Raises
        :class:`RefusedHead`."""
        if len(self.headers) > MAX_HEADER_FIELDS:
            message = f"The request has more than {MAX_HEADER_FIELDS} header fields."
            raise RefusedHead(message, 431, "request_head_too_large")
        hosts = self._hosts
        if hosts > 1:
            raise RefusedHead("The request has more than one Host header.")
        version = self.parser.get_http_version()
        if not hosts and version == "1.1":
            raise RefusedHead("An HTTP/1.1 request must have a Host header.")
        if version == "0.9":
            raise RefusedHead("HTTP/0.9 is not supported; send an HTTP/1.1 request.")
        if version == "1.0":
            self.expect_100_continue = False  # an HTTP/1.0 client gets no 100 Continue
        elif version != "1.1":  # llhttp passes 2.0 (h2c's request line) and served it
            message = f"HTTP/{version} is not supported here; send an HTTP/1.1 request."
            raise RefusedHead(message, 505, "http_version_not_supported")


def refusal(error: httptools.HttpParserError) -> RefusedHead:
    """Why the parser stopped at a head: the :class:`RefusedHead` a callback raised
    (httptools links it as the error's context), else bytes that are not HTTP."""
    refused = error.__context__
    return refused if type(refused) is RefusedHead else RefusedHead(INVALID_HTTP)
