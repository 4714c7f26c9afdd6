"""How far a shadow's answer agrees with the primary's, for deterministic requests.

Only a request that asks for greedy decoding (``temperature`` 0) and one choice is
compared: anything sampled differs by design. Two figures per rollout:

* exact equality of the answer text (``vgate_shadow_agreement_total{outcome}``,
  ``same`` or ``differ``);
* a token-overlap score in [0, 1] (``vgate_shadow_token_overlap``): the F1 of the
  two answers' whitespace tokens counted as multisets (1: the same words as often,
  in any order; 0: no word in common), which stays meaningful when one answer is a
  prefix of the other or differs by a word.

The two answers arrive in either order, each on its own task; :class:`AgreementPair`
records once both are in and forgets a pair one side of which failed.

A streamed primary is read as it passes (:class:`StreamCollector`): only its first
choice's text is kept, never its events, and at most :data:`MAX_COMPARED_CHARS` of
it. The events of a long stream (a token's event is a few hundred bytes, a few
kilobytes with ``top_logprobs``) would otherwise all be held until its end, by every
primary stream whose copy was drawn, however many: the shadow's ``max_concurrent``
bounds the copies in flight, not the primaries still streaming after them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from gateway.observability.metrics import GatewayMetrics

_EVENT_PREFIX = b"data: "
_DONE = b"[DONE]"

MAX_COMPARED_CHARS = 1 << 20
"""The longest primary text a streamed answer is compared by (a million characters,
a few hundred thousand tokens): past it the pair records nothing."""


def is_deterministic(body: dict[str, Any]) -> bool:
    """Whether ``body`` asks for greedy decoding with one choice (answers comparable)."""
    temperature = body.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        return False
    n = body.get("n")
    return temperature == 0 and (n is None or n == 1)


def answer_text(body: bytes) -> str | None:
    """The first choice's text of a JSON chat or text completion (None: not one)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    choice = _first_choice(answer)
    if choice is None:
        return None
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    return text if isinstance(text, str) else None


def token_overlap(a: str, b: str) -> float:
    """F1 of the whitespace tokens of ``a`` and ``b`` as multisets (1.0 for two empty
    answers)."""
    left, right = Counter(a.split()), Counter(b.split())
    total = sum(left.values()) + sum(right.values())
    if total == 0:
        return 1.0
    common = sum((left & right).values())
    return 2.0 * common / total


class StreamCollector:
    """A stream tap keeping the primary's first-choice text as the events pass, for
    the comparison at its end (the relay hands taps whole events).

    It stops reading, and :meth:`text` is None, once the events give no comparable
    text (an event that cannot be read or carries an error), once the text passes
    :data:`MAX_COMPARED_CHARS`, or once ``pair`` needs no primary text any more (the
    shadow failed): the rest of the stream then costs one check per batch."""

    __slots__ = ("_chars", "_ended", "_failed", "_pair", "_parts")

    def __init__(self, pair: AgreementPair | None = None) -> None:
        self._pair = pair
        self._parts: list[str] = []
        self._chars = 0
        self._ended = False
        """``[DONE]`` was seen: later bytes are not the answer's."""
        self._failed = False

    def inspect(self, batch: bytes) -> bytes:
        if self._ended or self._failed:
            return batch
        pair = self._pair
        if pair is not None and not pair.wants_primary:
            self._give_up()
            return batch
        for event in batch.split(b"\n\n"):
            if not event.startswith(_EVENT_PREFIX):
                continue
            if not self._read(event[len(_EVENT_PREFIX) :]):
                return batch
        return batch

    def _read(self, data: bytes) -> bool:
        """Take one event's text; False once nothing more is to be read."""
        if data == _DONE:
            self._ended = True
            return False
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._give_up()
            return False
        if not isinstance(chunk, dict) or "error" in chunk:
            self._give_up()
            return False
        choice = _first_choice(chunk)
        if choice is None or choice.get("index", 0) != 0:
            return True
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str) and text:
            self._chars += len(text)
            if self._chars > MAX_COMPARED_CHARS:
                self._give_up()
                return False
            self._parts.append(text)
        return True

    def _give_up(self) -> None:
        self._failed = True
        self._parts = []

    def text(self) -> str | None:
        return None if self._failed else "".join(self._parts)


class AgreementPair:
    """The primary's and the shadow's texts of one request, compared once both are in."""

    __slots__ = ("_metrics", "_primary", "_rollout", "_settled", "_shadow")

    def __init__(self, rollout: str, metrics: GatewayMetrics) -> None:
        self._rollout = rollout
        self._metrics = metrics
        self._primary: str | None = None
        self._shadow: str | None = None
        self._settled = False

    @property
    def wants_primary(self) -> bool:
        """Whether the primary's text could still be compared (no side failed yet)."""
        return not self._settled

    def primary(self, text: str | None) -> None:
        """The primary's answer text (None: it failed, or has no text: no comparison)."""
        if text is None:
            self._settled = True
            return
        self._primary = text
        self._compare()

    def shadow(self, text: str | None) -> None:
        if text is None:
            self._settled = True
            return
        self._shadow = text
        self._compare()

    def _compare(self) -> None:
        primary, shadow = self._primary, self._shadow
        if self._settled or primary is None or shadow is None:
            return
        self._settled = True
        outcome = "same" if primary == shadow else "differ"
        self._metrics.shadow_agreement.labels(self._rollout, outcome).inc()
        self._metrics.shadow_overlap.labels(self._rollout).observe(token_overlap(primary, shadow))


def _first_choice(answer: Any) -> dict[str, Any] | None:
    if not isinstance(answer, dict):
        return None
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    first: dict[str, Any] = choices[0]
    return first
