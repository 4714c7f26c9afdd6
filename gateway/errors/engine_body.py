"""What an engine's error answer says, read from any shape of body: vLLM's
``{"error": {...}}``, older vLLM's ``{"object": "error", ...}``, FastAPI's ``{"detail"}``
(a string, or a validation error list), ``{"message"}``, plain text, or a proxy's HTML
page (its title). Only reading: what of it reaches the client is decided by the caller
(:func:`gateway.errors.openai_error`); part of :mod:`gateway.errors`, so nothing else
of ours is imported here.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_HTML_TITLE = re.compile(rb"(?is)<title[^<>]*>([^<]*)</title>")
"""An HTML page's title. Linear: each try stops at the next ``<`` (``[^>]*`` read to the
end of the body from every ``<title`` without a ``>``: quadratic in a page of up to 256 MB)."""


def engine_error(raw: bytes) -> tuple[str, str | None, str | None]:
    """The message, param and (string) code of an engine's error body; for a body that
    is not an error object, its text."""
    try:
        data = orjson.loads(raw) if raw[:1] == b"{" else None
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):  # {"error": "text"} (some servers), or FastAPI's {"detail"}
        return error, None, None
    if isinstance(data, dict) and error is None and data.get("object") == "error":
        error = data  # older vLLM: {"object": "error", "message", "type", "param", "code"}
    if not isinstance(error, dict):
        detail = data.get("detail") if isinstance(data, dict) else None
        if isinstance(detail, str):
            return detail, None, None
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return validation_message(detail), None, None  # FastAPI's 422
        message = data.get("message") if isinstance(data, dict) else None
        if isinstance(message, str):  # {"message": "text"} (some servers)
            return message, None, None
        return text_message(raw), None, None
    message = error.get("message")
    param = error.get("param")
    code = error.get("code")
    return (
        message if isinstance(message, str) else "",
        param if isinstance(param, str) else None,
        code if isinstance(code, str) else None,  # vLLM's is the HTTP status: not a code
    )


def text_message(raw: bytes) -> str:
    """A body that is no error object: its text, or for an HTML page (a proxy's in
    front of the engine) its title, the markup being no message (empty without one)."""
    if raw.lstrip()[:1] != b"<":
        return raw.decode("utf-8", "replace").strip()
    title = _HTML_TITLE.search(raw)
    return " ".join(title.group(1).decode("utf-8", "replace").split()) if title else ""


def validation_message(detail: list[Any]) -> str:
    """FastAPI's validation errors (``{"detail": [{"loc": [...], "msg": ...}, ...]}``)
    as one line: the first error's field and message, and how many more there are."""
    first = detail[0]
    where = ".".join(str(part) for part in first.get("loc") or () if part != "body")
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    more = len(detail) - 1
    return message + (f" (and {more} more)" if more else "")
