"""An engine's failure in a Responses answer, told without the engine's internals.

A Responses engine reports a failure in its answer, not in an HTTP status: an
``error`` event (OpenAI's ``ResponseErrorEvent``: ``code``, ``message``) or a
``response.failed`` event (and a non-streamed response) whose ``response.error``
has a ``message``. That text is ``str()`` of whatever the engine hit: a traceback,
its host's paths, its peers' addresses. As chat's engine errors are
(:mod:`gateway.errors.engine_internals`), a server failure's message is replaced
whole and any other's is kept less what is internal, before a client sees it or it
is stored. vLLM's own ``{"error": {...}}`` events are mapped by the relay already
(:func:`gateway.upstream.relay.mapped_error_events`).

Only a batch holding :data:`FAILURE_SIGN` and one of :data:`FAILURE_MARKS` is looked at
(byte searches; inside a JSON string a quote is escaped, so generated text never
matches).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors.engine_internals import engine_field, without_internals, without_secrets
from gateway.protocol.exact_json import encoded_exactly

FAILURE_MARKS = (b'"type":"error"', b'"type": "error"', b'"response.failed"')
MAX_MESSAGE = 4000
SERVER_CODES = frozenset({"server_error", "internal_error", "internal_server_error"})
"""Codes of a failure of the engine's own: its message is the operator's, replaced whole."""
FAILED_MESSAGE = "The engine failed while handling this request; the details are in its log."


FAILURE_SIGN = b'"error"'
"""In every event :func:`told_failures` changes: the ``type`` of an ``error`` event, the
``error`` key of a ``response.failed`` event's response (what is told). An event's
response shows ``"error":null`` too, but the events that carry one are a few of a
stream (its deltas carry none): one search per batch, the marks only where it hits."""


def has_failure(batch: bytes) -> bool:
    return FAILURE_SIGN in batch and any(mark in batch for mark in FAILURE_MARKS)


def told_failures(batch: bytes, secrets: tuple[str, ...] = ()) -> bytes:
    """``batch`` with the message of each ``error`` and ``response.failed`` event (and
    its ``code``, ``param`` and ``type``) told without the engine's internals nor
    ``secrets`` (the engines' keys); ``batch``
    itself when there is nothing to change."""
    events = batch.split(b"\n\n")
    changed = False
    for i, event in enumerate(events):
        if not has_failure(event):
            continue
        lines = event.split(b"\n")
        for j, line in enumerate(lines):
            if not line.startswith(b"data:"):
                continue
            told = _told_event(line[5:], secrets)
            if told is not None:
                lines[j] = b"data: " + told
                events[i] = b"\n".join(lines)
                changed = True
    return b"\n\n".join(events) if changed else batch


def _told_event(source: bytes, secrets: tuple[str, ...]) -> bytes | None:
    try:
        data = orjson.loads(source)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("type")
    if kind == "error":
        changed = _tell(data, secrets)
        error = data.get("error")
        if isinstance(error, dict):  # the gateway's own error events carry both
            changed = _tell(error, secrets, data.get("code")) or changed
    elif kind == "response.failed":
        response = data.get("response")
        changed = isinstance(response, dict) and told_response(response, secrets)
    else:
        return None
    return encoded_exactly(data, source) if changed else None


def told_response(response: dict[str, Any], secrets: tuple[str, ...] = ()) -> bool:
    """Tell a failed response's ``error`` so (in place); whether it changed."""
    error = response.get("error")
    return isinstance(error, dict) and _tell(error, secrets)


FIELDS = ("code", "param", "type")
"""An error's fields besides its message that an engine fills as it likes: cleaned and
bounded as its message is (:func:`gateway.errors.engine_internals.engine_field`)."""


def _clean_fields(error: dict[str, Any], secrets: tuple[str, ...]) -> bool:
    """Clean ``error``'s :data:`FIELDS` in place (a string left empty, or no string,
    becomes null); whether any changed (an ``error`` event's own ``type`` stays)."""
    changed = False
    for name in FIELDS:
        value = error.get(name)
        if value is None:
            continue
        cleaned = engine_field(value, secrets)
        if cleaned != value:
            error[name] = cleaned
            changed = True
    return changed


def _tell(error: dict[str, Any], secrets: tuple[str, ...], code: Any = None) -> bool:
    changed = _clean_fields(error, secrets)
    message = error.get("message")
    if not isinstance(message, str):
        return changed
    code = error.get("code", code)
    if code in SERVER_CODES or error.get("type") == "server_error":
        told = FAILED_MESSAGE
    else:
        kept = without_secrets(message, secrets, MAX_MESSAGE)
        told = without_internals(kept, MAX_MESSAGE) or FAILED_MESSAGE
    if told == message:
        return changed
    error["message"] = told
    return True
