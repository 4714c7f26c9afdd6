"""What the cache stores about one answer: the answer itself, as the client got it.

An entry is the engine's answer in bytes, after the gateway's model rename: a
JSON answer's body, or a stream's SSE events exactly as relayed (every event
kept, so chunk boundaries, ``reasoning``, ``tool_calls`` deltas, logprobs,
``system_fingerprint``, ``stop_reason``, token ids... all survive). Besides the
bytes it keeps only what the pipeline needs: the answer's ``id`` (replaced by a
fresh one at replay), the tokens it used (for ``hits_consume_tokens``), its
completion tokens and the output cap the gateway wrote for it where the key does
not hold it (a hit must not exceed the cap the gateway gives its request, nor be
an answer a smaller cap cut: :meth:`Entry.serves`), when it was made, and where a
stream's usage event sits (removed at replay when the client did not ask for
usage: the gateway always asks the engine for it).

A replay is the stored bytes with the ``id`` string swapped, byte for byte, for a
fresh one of the same prefix; ``created`` and everything else stay as stored.
Streamed and non-streamed requests are different cache keys
(:mod:`gateway.cache.key`), so an entry is only ever replayed in its own form.

A cache shared between keys must not tell a tenant that another asked first, nor
when: the pipeline sets :attr:`Entry.fresh_at` on its hits, and their replays
get an id of the form a fresh answer has (:func:`lookalike_id`: vLLM's
``chatcmpl-vgate-<hex>``, named after the request id the gateway sends, the
stub's ``chatcmpl-<hex>``) and every ``created`` set to the time of the request
(:func:`restamp`), both by byte search like the id swap. Replays of a per-key
cache do neither.

Entries are versioned: anything stored in another format (an older vgate's
digest) decodes to None, a miss.
"""

from __future__ import annotations

import os
import re
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field

import orjson

DONE = b"data: [DONE]\n\n"
FORMAT_VERSION = 2
_MAGIC = b"vgate-entry/2\n"
_ID_KEYS = (b'"id":"', b'"id": "')
_MAX_ID = 256
_CREATED_VALUE = re.compile(rb'("created": ?)\d+')
_HEX = frozenset(string.hexdigits.lower())
_KINDS = (string.digits, string.ascii_lowercase, string.ascii_uppercase)
_UUID4 = re.compile(r"[0-9a-f]{8}(-?)[0-9a-f]{4}\1[4][0-9a-f]{3}\1[89ab][0-9a-f]{3}\1[0-9a-f]{12}")


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
    fresh_at: int | None = None
    """Set when the replay must pass for a fresh answer (a shared cache's hit): the
    ``created`` it gets, this request's time. Never stored."""
    completion: int | None = None
    """``usage.completion_tokens`` of the answer (None: not reported, or an entry of
    a vgate that did not keep it)."""
    cap: int | None = None
    """The output cap the gateway wrote into the body the engine got, where the key
    does not hold it (a key's ``tpm``: see :meth:`serves`); None when the engine got
    the length limit the key holds."""

    def longest_choice(self) -> int | None:
        """The most completion tokens one of its choices may hold (None: unknown): the
        whole answer's (every choice's), and no more than :attr:`cap`, which the engine
        got as every choice's limit (a completions request with several prompts has a
        choice per prompt; ``cap`` is per choice)."""
        completion, made_under = self.completion, self.cap
        if completion is None or made_under is None:
            return completion
        return min(completion, made_under)

    def serves(self, cap: int | None) -> bool:
        """Whether this is the answer of a request the gateway caps at ``cap`` output
        tokens per choice (None: no cap). Not when a choice may hold more than ``cap``
        (:meth:`longest_choice`, or an unknown number), nor when the gateway's own cap
        may have cut it (it reached :attr:`cap`) and this request may have more."""
        completion = self.completion
        if cap is not None:
            longest = self.longest_choice()
            if longest is None or longest > cap:
                return False
        made_under = self.cap
        if made_under is None or (cap is not None and cap <= made_under):
            return True
        return completion is not None and completion < made_under

    def encode(self) -> bytes:
        meta = {
            "stream": self.stream,
            "id": self.answer_id,
            "tokens": self.tokens,
            "usage": list(self.usage_span) if self.usage_span is not None else None,
            "created_at": self.created_at,
            "completion": self.completion,
            "cap": self.cap,
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
                completion=_count(meta.get("completion")),
                cap=_count(meta.get("cap")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError):
            return None
        if entry.usage_span is not None and not 0 <= entry.usage_span[0] <= entry.usage_span[1]:
            return None
        return entry

    def replay(self, include_usage: bool = True) -> bytes:
        """The answer for a new client: a fresh ``id`` (with :attr:`fresh_at`, of the
        stored one's form, and ``created`` rewritten), and a stream's usage event only
        when ``include_usage``."""
        payload = self.payload
        if not include_usage and self.usage_span is not None:
            start, end = self.usage_span
            payload = with_fingerprint(payload[:start], payload[start:end]) + payload[end:]
        return IdSwap(self.answer_id, self.fresh_at).apply(payload)


def _count(value: object) -> int | None:
    """A token count as stored: a non-negative integer, else None (unknown)."""
    return value if type(value) is int and value >= 0 else None


def completion_tokens(usage: object) -> int | None:
    """``completion_tokens`` of an answer's ``usage`` object, if it reports a count."""
    return _count(usage.get("completion_tokens")) if isinstance(usage, dict) else None


def usage_event_completion(events: bytes, span: tuple[int, int] | None) -> int | None:
    """``completion_tokens`` of a stream's usage event at ``span``
    (:func:`usage_event_span`), if it reports a count."""
    if span is None:
        return None
    start, end = span
    try:
        event = orjson.loads(events[start + 5 : end])  # after "data:"
    except orjson.JSONDecodeError:
        return None
    return completion_tokens(event.get("usage")) if isinstance(event, dict) else None


class IdSwap:
    """Replaces one answer id by a fresh one of the same prefix, in bytes; with
    ``fresh_at``, by one of the same form (:func:`lookalike_id`), and every
    ``created`` becomes ``fresh_at`` (:func:`restamp`).

    The id is unique (``chatcmpl-<hex>``, or vLLM's ``chatcmpl-`` and the request id
    the gateway sent), so its quoted form can only be the id itself, never text the
    model generated (a quote inside a JSON string is escaped)."""

    __slots__ = ("_created", "_new", "_old")

    def __init__(self, answer_id: str | None, fresh_at: int | None = None) -> None:
        self._created = b"" if fresh_at is None else b"%d" % fresh_at
        if answer_id is None:
            self._old = self._new = b""
            return
        self._old = orjson.dumps(answer_id)
        new = fresh_id(answer_id) if fresh_at is None else lookalike_id(answer_id)
        self._new = orjson.dumps(new)

    def apply(self, data: bytes) -> bytes:
        if self._old:
            data = data.replace(self._old, self._new)
        return restamp(data, self._created) if self._created else data


def fresh_id(answer_id: str) -> str:
    """A new id with the prefix of ``answer_id`` (up to its first ``-``)."""
    prefix, dash, _ = answer_id.partition("-")
    return (prefix + "-" if dash else "") + os.urandom(16).hex()


def lookalike_id(answer_id: str) -> str:
    """A new random id of the form of ``answer_id``, as long as it: its leading words
    (lower-case letters: ``chatcmpl-``, ``cmpl-``, ``embd-``, vLLM's ``chatcmpl-vgate-``
    where the gateway's request id follows) kept, then, ``-`` for ``-``, random lower-case
    hex for a run of it (the stub's ``<24 hex>``, the gateway's request id), a new uuid4
    for a uuid4 (its version and variant digits are fixed), and for any other run
    (OpenAI's base 62) a random digit for a digit, a letter for a letter, case kept.
    The last part is always new, a word or not."""
    parts = answer_id.split("-")
    words = 0
    while words < len(parts) - 1 and parts[words].isalpha() and parts[words].islower():
        words += 1
    rest = "-".join(parts[words:])
    match = _UUID4.fullmatch(rest)
    if match is not None:
        fresh = [str(uuid.uuid4()) if match.group(1) else uuid.uuid4().hex]
    else:
        fresh = [_random_like(part) for part in parts[words:]]
    return "-".join([*parts[:words], *fresh])


def _random_like(part: str) -> str:
    if _HEX.issuperset(part):
        return secrets.token_hex((len(part) + 1) // 2)[: len(part)]
    return "".join(_same_kind(char) for char in part)


def _same_kind(char: str) -> str:
    for kind in _KINDS:
        if char in kind:
            return secrets.choice(kind)
    return char


def restamp(data: bytes, created: bytes) -> bytes:
    """``data`` with the value of every ``"created"`` key set to ``created`` (digits).

    No parsing: a quote in generated text is escaped, so ``"created":`` is only ever
    the key. (Only a shared cache's replays come here, never a miss.)"""
    return _CREATED_VALUE.sub(lambda match: match.group(1) + created, data)


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


_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')


def usage_event_span(events: bytes) -> tuple[int, int] | None:
    """Where the trailing usage event (no choices, a ``usage``) of a stream lies:
    the last event before ``[DONE]``, found by byte search (``data:`` with or without
    its space, the JSON compact or not, as any OpenAI server may write it)."""
    end = len(events) - len(DONE) if events.endswith(DONE) else len(events)
    start = events.rfind(b"\n\n", 0, end - 2)
    start = 0 if start < 0 else start + 2
    if (
        b'"usage"' in events[start:end]
        and events.startswith(b"data:", start)
        and _NO_CHOICES.search(events, start, end) is not None
    ):
        return start, end
    return None


_FINGERPRINT = re.compile(rb'"system_fingerprint"\s*:\s*"[^"\\]*"')


def last_event_start(events: bytes) -> int:
    """Where the last event of ``events`` (whole events, each ending in a blank line)
    begins."""
    start = events.rfind(b"\n\n", 0, len(events) - 2)
    return 0 if start < 0 else start + 2


def is_bare_finish(event: bytes) -> bool:
    """A chunk that ends a choice (``finish_reason`` set) and carries no
    ``system_fingerprint``: where vLLM puts it when usage is not asked for."""
    finished = b'"finish_reason":"' in event or b'"finish_reason": "' in event
    return finished and b'"system_fingerprint"' not in event


def with_fingerprint(events: bytes, usage_event: bytes) -> bytes:
    """``events`` (whole events) with the ``system_fingerprint`` of ``usage_event`` on
    their last one, if that ends a choice without one. Asked for usage, vLLM moves the
    fingerprint from the last chunk to the usage event: a client that did not ask for
    usage, whose usage event is removed, would lose it with it."""
    match = _FINGERPRINT.search(usage_event)
    if match is None or not events.endswith(b"}\n\n"):
        return events
    if not is_bare_finish(events[last_event_start(events) :]):
        return events
    return events[:-3] + b"," + match.group(0) + b"}\n\n"
