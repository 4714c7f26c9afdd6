"""What the cache stores about one answer: the answer itself, as the client got it.

An entry is the engine's answer in bytes, after the gateway's model rename: a
JSON answer's body, or a stream's SSE events exactly as relayed (every event
kept, so chunk boundaries, ``reasoning``, ``tool_calls`` deltas, logprobs,
``system_fingerprint``, ``stop_reason``, token ids... all survive). Besides the
bytes it keeps only what the pipeline needs: the answer's ``id`` (replaced by a
fresh one at replay), the tokens it used (for ``hits_consume_tokens``), when it
was made, and where a stream's usage event sits (removed at replay when the
client did not ask for usage: the gateway always asks the engine for it).

A replay is the stored bytes with the ``id`` string swapped, byte for byte, for a
fresh one of the same prefix; ``created`` and everything else stay as stored.
Streamed and non-streamed requests are different cache keys
(:mod:`gateway.cache.key`), so an entry is only ever replayed in its own form.

Entries are versioned: anything stored in another format (an older vgate's
digest) decodes to None, a miss.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import orjson

DONE = b"data: [DONE]\n\n"
FORMAT_VERSION = 2
_MAGIC = b"vgate-entry/2\n"
_ID_KEYS = (b'"id":"', b'"id": "')
_MAX_ID = 256


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class Entry:
    """One cached answer: its bytes and what the pipeline needs to know about them."""

    stream: bool
    payload: bytes
    """The JSON body, or every SSE event of the stream (``[DONE]`` included)."""
    answer_id: str | None
    """The answer's ``id`` as it appears in ``payload`` (None: it has none to replace)."""
    tokens: int | None
    """``usage.total_tokens`` of the answer, if it reported usage."""
    usage_span: tuple[int, int] | None = None
    """Where a stream's trailing usage event lies in ``payload``."""
    created_at: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        meta = {
            "stream": self.stream,
            "id": self.answer_id,
            "tokens": self.tokens,
            "usage": list(self.usage_span) if self.usage_span is not None else None,
            "created_at": self.created_at,
        }
        return _MAGIC + orjson.dumps(meta) + b"\n" + self.payload

    @classmethod
    def decode(cls, raw: bytes) -> Entry | None:
        """The entry, or None for anything this version cannot replay."""
        if not raw.startswith(_MAGIC):
            return None
        end = raw.find(b"\n", len(_MAGIC))
        if end < 0:
            return None
        try:
            meta = orjson.loads(raw[len(_MAGIC) : end])
            span = meta["usage"]
            answer_id = meta["id"]
            tokens = meta["tokens"]
            entry = cls(
                stream=bool(meta["stream"]),
                payload=raw[end + 1 :],
                answer_id=answer_id if isinstance(answer_id, str) else None,
                tokens=tokens if isinstance(tokens, int) else None,
                usage_span=(int(span[0]), int(span[1])) if span is not None else None,
                created_at=float(meta["created_at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return None
        if entry.usage_span is not None and not 0 <= entry.usage_span[0] <= entry.usage_span[1]:
            return None
        return entry

    def replay(self, include_usage: bool = True) -> bytes:
        """The answer for a new client: a fresh ``id``, and a stream's usage event
        only when ``include_usage``."""
        payload = self.payload
        if not include_usage and self.usage_span is not None:
            start, end = self.usage_span
            payload = payload[:start] + payload[end:]
        return IdSwap(self.answer_id).apply(payload)


class IdSwap:
    """Replaces one answer id by a fresh one of the same prefix, in bytes.

    The id is random and unique (``chatcmpl-<hex>``), so its quoted form can only
    be the id itself, never text the model generated (a quote inside a JSON
    string is escaped)."""

    __slots__ = ("_new", "_old")

    def __init__(self, answer_id: str | None) -> None:
        if answer_id is None:
            self._old = self._new = b""
            return
        self._old = orjson.dumps(answer_id)
        self._new = orjson.dumps(fresh_id(answer_id))

    def apply(self, data: bytes) -> bytes:
        return data.replace(self._old, self._new) if self._old else data


def fresh_id(answer_id: str) -> str:
    """A new id with the prefix of ``answer_id`` (up to its first ``-``)."""
    prefix, dash, _ = answer_id.partition("-")
    return (prefix + "-" if dash else "") + os.urandom(16).hex()


def find_answer_id(data: bytes) -> str | None:
    """The first ``"id"`` value of a JSON body or of a stream's first event: where
    OpenAI servers put the answer's id (no parsing: a byte search)."""
    for key in _ID_KEYS:
        start = data.find(key)
        if start < 0:
            continue
        start += len(key)
        end = data.find(b'"', start, start + _MAX_ID)
        if end <= start:
            return None
        value = data[start:end]
        if b"\\" in value:
            return None
        return value.decode("utf-8", "replace")
    return None


def usage_event_span(events: bytes) -> tuple[int, int] | None:
    """Where the trailing usage event (no choices, a ``usage``) of a stream lies:
    the last event before ``[DONE]``, found by byte search."""
    end = len(events) - len(DONE) if events.endswith(DONE) else len(events)
    start = events.rfind(b"\n\ndata: ", 0, end - 2)
    start = 0 if start < 0 else start + 2
    event = events[start:end]
    if b'"usage"' in event and (b'"choices":[]' in event or b'"choices": []' in event):
        return start, end
    return None
