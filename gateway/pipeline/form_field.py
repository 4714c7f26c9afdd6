"""One field of a ``multipart/form-data`` body, found without a multipart framework.

The audio routes (``/v1/audio/transcriptions|translations``) name their model in a
form field, next to the audio file. Routing needs that one value; the body goes
to the engine as it came (or with only that value replaced, for a model the
engines serve under another name). :func:`find_field` walks the parts by their
boundary as RFC 7578 / RFC 2046 frame them, reading part headers only, in one
linear pass: a hostile body (no closing delimiter, endless headers, thousands of
parts, the field twice) is a 400, never a long scan or a guess. Two fields of
the same name are refused: the engine would read one of them, perhaps not the
one the gateway authorised and routed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.errors import InvalidRequestError

MAX_PARTS = 1000
MAX_BOUNDARY = 70  # RFC 2046
_CRLF = b"\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PARAM = re.compile(
    rb"[ \t]*;[ \t]*(?:(" + _TOKEN.pattern + rb')[ \t]*=[ \t]*("[^"\\\r\n]*"|[^;"\\\s]+)[ \t]*)?'
)
"""One ``; key=value`` parameter (or an empty one), in the subset of the syntax on which
every parser agrees: no backslash escapes, no quote in an unquoted value, only spaces
and tabs around, no RFC 2231 key (``name*=utf-8''model``, ``name*0=``: python-multipart
up to 0.0.29 decodes them into a second ``name``, later ones ignore them). The engine
(python-multipart's ``parse_options_header``) reads anything else its own way (a ``;``
inside quotes, ``\\x`` kept as is, a vertical tab in a key): rather than guess, such a
header is refused."""
_BOUNDARY_END = re.compile(rb"[ \t]*\r\n")


@dataclass(frozen=True, slots=True)
class FieldSpan:
    """Where a field's value lies in the body: ``body[start:end]``."""

    value: bytes
    start: int
    end: int


def boundary_of(content_type: str) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type (400 when there is none)."""
    kind, semicolon, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise InvalidRequestError("the request must be multipart/form-data")
    parsed = _params(semicolon.encode("latin-1", "replace") + params.encode("latin-1", "replace"))
    boundaries = [value for key, value in (parsed or []) if key == b"boundary"]
    # One boundary, read as the engine reads it: with two, the engine frames the body
    # by the last, and the field found here would not be the one the engine reads.
    if parsed is not None and len(boundaries) == 1:
        boundary = boundaries[0]
        if 0 < len(boundary) <= MAX_BOUNDARY and boundary.isascii():
            return boundary
    raise InvalidRequestError("multipart/form-data without a valid boundary")


def find_field(body: bytes, boundary: bytes, name: bytes) -> FieldSpan | None:
    """The one field called ``name`` (None: absent); 400 for a malformed body or the
    field given twice."""
    dash = b"--" + boundary
    delimiter = _CRLF + dash
    if body.startswith(dash):
        pos = len(dash)
    else:  # a preamble first
        at = body.find(delimiter)
        if at < 0:
            raise _malformed("no boundary")
        pos = at + len(delimiter)
    found: FieldSpan | None = None
    for _ in range(MAX_PARTS + 1):
        if body.startswith(b"--", pos):  # the closing delimiter
            return found
        # After the delimiter: spaces or tabs, then CRLF. Anything else makes it part of
        # the content to the engine, which would then not see the part that follows.
        line_end = _BOUNDARY_END.match(body, pos)
        if line_end is None:
            raise _malformed("a boundary line holds more than the boundary")
        pos = line_end.end()
        if body.startswith(_CRLF, pos):  # a part without headers
            headers, content_start = b"", pos + 2
        else:
            headers_end = body.find(b"\r\n\r\n", pos)
            if headers_end < 0:
                raise _malformed("a part's headers do not end")
            headers, content_start = body[pos:headers_end], headers_end + 4
        content_end = body.find(delimiter, content_start)
        if content_end < 0:
            raise _malformed("a part does not end")
        if _field_name(headers) == name:
            if found is not None:
                raise InvalidRequestError(
                    f"the form field `{name.decode()}` appears more than once",
                    param=name.decode(),
                )
            found = FieldSpan(body[content_start:content_end], content_start, content_end)
        pos = content_end + len(delimiter)
    raise _malformed(f"more than {MAX_PARTS} parts")


def replace_field(body: bytes, span: FieldSpan, value: bytes) -> bytes:
    """``body`` with the field's value replaced by ``value``."""
    return body[: span.start] + value + body[span.end :]


def _field_name(headers: bytes) -> bytes | None:
    """The ``name`` of a part's Content-Disposition (the last such header wins, as in
    the engines' parser)."""
    name: bytes | None = None
    for line in headers.split(_CRLF):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        kind, semicolon, rest = value.partition(b";")
        params = _params(semicolon + rest)
        if _TOKEN.fullmatch(kind.strip(b" \t")) is None or params is None:
            raise _malformed("a Content-Disposition this gateway cannot read unambiguously")
        name = None
        for param, param_value in params:
            if param == b"name":
                name = param_value
    return name


def _params(text: bytes) -> list[tuple[bytes, bytes]] | None:
    """The ``(lower-case key, unquoted value)`` pairs of a header's ``; key=value``
    parameters, in order; None when ``text`` is not wholly such parameters (see
    :data:`_PARAM`)."""
    found: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(text.rstrip(b" \t"))
    while pos < end:
        match = _PARAM.match(text, pos, end)
        if match is None or match.end() == pos:
            return None
        pos = match.end()
        if match.group(1) is not None:
            if b"*" in match.group(1):  # RFC 2231 (name*=, name*0=): parsers differ
                return None
            value = match.group(2)
            found.append((match.group(1).lower(), value[1:-1] if value[:1] == b'"' else value))
    return found


def _malformed(why: str) -> InvalidRequestError:
    return InvalidRequestError(f"malformed multipart/form-data body: {why}")
