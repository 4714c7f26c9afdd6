"""Reading the real token ``usage`` of a response, for rate-limit reconciliation.

Non-streaming bodies carry ``usage`` at the top level. Streams carry it only
when asked (``stream_options.include_usage``), in one last event with no
choices, right before ``[DONE]``: the gateway asks for it when it needs it and,
if the client did not ask, strips that event so the client sees exactly the
stream it requested. Only the last event of each relayed batch is examined (a
byte search), so this costs nothing per token.

A count is believed only when it is an integer from 0 to
:data:`gateway.ratelimit.cost.MAX_USAGE`: anything else an engine reports (negative,
fractional, a string, absurdly large) is unknown, and the request keeps its
reservation.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway.cache.entry import (
    is_bare_finish,
    last_event_start,
    usage_event_span,
    with_fingerprint,
)
from gateway.protocol.exact_json import encoded_exactly
from gateway.ratelimit.cost import believable

_USAGE = b'"usage"'
_TOTAL = re.compile(rb'"total_tokens"\s*:\s*(\d{1,10})(?![\d.eE])')
"""An integer count of at most 10 digits (anything else is left to the full parse)."""
_PROMPT = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,10})(?![\d.eE])')


def usage_tokens(usage: Any) -> int | None:
    """``total_tokens`` of a usage object (without one, prompt + completion), if it is
    one and a count to believe (:func:`believable`)."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if total is not None:
        return believable(total)
    prompt = believable(usage.get("prompt_tokens"))
    completion = believable(usage.get("completion_tokens"))
    if prompt is None or completion is None:
        return None
    return believable(prompt + completion)


def prompt_tokens(usage: Any) -> int | None:
    """``prompt_tokens`` of a usage object, if it is one and a count to believe: what
    the engine counted of the prompt, which calibrates the key's prompt estimate
    (:mod:`gateway.ratelimit.calibration`)."""
    return believable(usage.get("prompt_tokens")) if isinstance(usage, dict) else None


def response_input_tokens(response: dict[str, Any]) -> int | None:
    """``usage.input_tokens`` of a Responses API response object, if it is a count to
    believe: what the engine counted of the conversation, which calibrates the key's
    prompt estimate as a chat's ``prompt_tokens`` does (unread, a key sending crafted
    text through ``/v1/responses`` was charged its raw estimate at every admission)."""
    usage = response.get("usage")
    return believable(usage.get("input_tokens")) if isinstance(usage, dict) else None


def body_prompt_tokens(body: bytes) -> int | None:
    """``usage.prompt_tokens`` of a non-streaming response body (None if it has none):
    a byte search from the last ``usage`` on, as :func:`body_usage`."""
    start = body.rfind(_USAGE)
    if start < 0:
        return None
    match = _PROMPT.search(body, start)
    return None if match is None else believable(int(match.group(1)))


def body_usage(body: bytes) -> int | None:
    """Tokens used by a non-streaming response body (None if it has no usage).

    Reads only the ``usage`` object (the last one in the body, where OpenAI
    servers put it) rather than parsing the whole answer.
    """
    start = body.rfind(_USAGE)
    if start < 0:
        return None
    match = _TOTAL.search(body, start)
    if match is not None:
        return believable(int(match.group(1)))
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return usage_tokens(parsed.get("usage")) if isinstance(parsed, dict) else None


def usage_of(body: bytes) -> Any:
    """The ``usage`` object of a JSON answer (None if it has none): parses the body, so
    only requests that are traced or logged call it."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return parsed.get("usage") if isinstance(parsed, dict) else None


def with_usage_requested(body: dict[str, Any], source: bytes = b"") -> bytes:
    """The request re-encoded so that a stream ends with a usage event (and only there:
    a ``continuous_usage_stats`` the client set without usage stays without effect).
    ``source``: the bytes ``body`` was read from (its integers beyond 64 bits stay
    exact, :func:`encoded_exactly`)."""
    options = body.get("stream_options")
    merged = (options if isinstance(options, dict) else {}) | {"include_usage": True}
    if "continuous_usage_stats" in merged:
        merged["continuous_usage_stats"] = False
    return encoded_exactly(body | {"stream_options": merged}, source)


def client_wants_usage(body: dict[str, Any]) -> bool:
    """Whether the engine sends this request's stream a usage event, as vLLM 0.32
    decides it (``should_include_usage``): ``stream_options.include_usage`` true (a JSON
    boolean: the schema refuses anything else), whose default is false (absent, null, or
    no ``stream_options``: no usage)."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


class UsageTap:
    """Finds the usage event in a relayed stream; removes it when ``strip``.

    Removing it, the tap keeps the ``system_fingerprint`` vLLM put there (asked for
    usage, vLLM moves it off the last chunk): a batch that ends with a chunk ending a
    choice without one is held back until the next batch, and the fingerprint of the
    usage event that follows is put on it (:func:`with_fingerprint`). The next batch
    comes at once (vLLM sends the usage event right after); a stream that fails
    before it still gets the held chunk (:meth:`flush`) ahead of its error event."""

    __slots__ = ("_held", "strip", "tokens", "usage")

    def __init__(self, strip: bool) -> None:
        self.strip = strip
        self.tokens: int | None = None
        self.usage: Any = None
        """The usage object itself (input and output tokens, for traces and logs)."""
        self._held = b""

    def flush(self) -> bytes:
        """What is held back (the stream failed before the next batch): sent as it is."""
        held, self._held = self._held, b""
        return held

    def inspect(self, batch: bytes) -> bytes:
        """``batch`` as the client should get it; notes the usage if it is in there."""
        if self._held:
            batch, self._held = self._held + batch, b""
        span = usage_event_span(batch)
        if span is None:
            if self.strip and batch.endswith(b"}\n\n"):
                last = last_event_start(batch)
                if is_bare_finish(batch[last:]):  # its fingerprint may be in what follows
                    self._held = batch[last:]
                    return batch[:last]
            return batch
        start, end = span
        try:
            parsed = orjson.loads(batch[start + 5 : end])  # after "data:"
        except orjson.JSONDecodeError:
            return batch
        if not isinstance(parsed, dict) or parsed.get("choices") != []:
            return batch
        usage = parsed.get("usage")
        if not isinstance(usage, dict):
            return batch
        # The usage event, whatever its counts: a count not to believe is not noted
        # (the reservation stands), and the event is still stripped when it must be.
        self.tokens = usage_tokens(usage)
        self.usage = usage
        if not self.strip:
            return batch
        return with_fingerprint(batch[:start], batch[start:end]) + batch[end:]
