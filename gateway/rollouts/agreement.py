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
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson

from gateway.observability.metrics import GatewayMetrics

_EVENT_PREFIX = b"data: "
_DONE = b"[DONE]"


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


def stream_text(events: bytes) -> str | None:
    """The first choice's text of a whole SSE answer (chat deltas or text chunks);
    None when an event cannot be read or carries an error."""
    parts: list[str] = []
    for event in events.split(b"\n\n"):
        if not event.startswith(_EVENT_PREFIX):
            continue
        data = event[len(_EVENT_PREFIX) :]
        if data == _DONE:
            break
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict) or "error" in chunk:
            return None
        choice = _first_choice(chunk)
        if choice is None or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(text, str):
            parts.append(text)
    return "".join(parts)


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
    """A stream tap keeping the primary's events, for the comparison at its end."""

    __slots__ = ("_batches",)

    def __init__(self) -> None:
        self._batches: list[bytes] = []

    def inspect(self, batch: bytes) -> bytes:
        self._batches.append(batch)
        return batch

    def text(self) -> str | None:
        return stream_text(b"".join(self._batches))


class AgreementPair:
    """The primary's and the shadow's texts of one request, compared once both are in."""

    __slots__ = ("_metrics", "_primary", "_rollout", "_settled", "_shadow")

    def __init__(self, rollout: str, metrics: GatewayMetrics) -> None:
        self._rollout = rollout
        self._metrics = metrics
        self._primary: str | None = None
        self._shadow: str | None = None
        self._settled = False

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
