"""Per-key calibration of the prompt estimate, learned from the engine's usage.

The prompt is estimated at :data:`gateway.ratelimit.cost.CHARS_PER_TOKEN` characters a
token, and settled to the engine's ``usage`` only when the answer ends. Crafted text
(single-letter words, random ASCII, CJK, emoji) tokenizes at 1-2 characters a token or
several tokens a character, and a burst of such requests sent at once was admitted on
the estimate before any of them settled: a tenant used several times its ``tpm`` per
window, again each time the window emptied (bug hunt). So each key name (the charge's
owner) gets a factor ``f >= 1`` its next prompt estimates are multiplied by:

* **raised at once** to what a settlement shows (real prompt tokens over the raw
  estimate), capped at :data:`MAX_FACTOR` (byte-level BPE gives up to ~3 tokens a CJK
  character: 12x the estimate);
* **lowered slowly**, one step per :data:`DECAY_INTERVAL_S` that saw at least
  :data:`DECAY_AFTER` settlements under the factor: to the highest ratio those showed,
  but at most half the way back to 1. A single settlement at the current factor in a
  step keeps it where it is, so alternating benign and crafted requests never lowers
  it; going from 4 to 2 takes two minutes of nothing but ordinary text, and the burst
  that follows raises it straight back.

Prompts estimated under :data:`MIN_ESTIMATE` tokens teach nothing (the chat template's
overhead dominates them), nor does usage that is not believable. The state is this
process's: an LRU of at most :data:`MAX_KEYS` keys whose factor is above 1 (keys at 1
hold no entry). Each replica learns on its own from the requests it settles. Admission
looks a factor up once per request of a key with a ``tpm`` (one dict lookup); a
settlement updates it in O(1).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MIN_ESTIMATE = 64
"""Prompts estimated below this many tokens are not learned from: the chat template's
own tokens (role markers, a default system prompt) dominate their usage."""
MAX_FACTOR = 16.0
"""The largest factor: byte-level BPE's worst text (~3 tokens a CJK character, 12x the
estimate) with room to spare."""
DECAY_AFTER = 8
"""Settlements under a factor before it may come down a step."""
DECAY_INTERVAL_S = 60.0
"""The least time between two steps down (one rate-limit window): whatever a tenant
sends, a factor comes down at most one step per window."""
SETTLED = 1.05
"""A factor that comes down to this or below is forgotten (back to 1)."""
MAX_KEYS = 10_000
"""Keys remembered at once; the least recently settled is forgotten first."""


class _Learned:
    """One key's factor, and what the settlements since it was set have shown."""

    def __init__(self, factor: float, since: float) -> None:
        self.factor = factor
        self.since = since  # when the factor was last set (monotonic seconds)
        self.seen = 0  # settlements under it since then
        self.peak = 1.0  # the highest ratio they showed


class PromptCalibration:
    """Each key's prompt factor (:func:`factor`), learned from settlements
    (:meth:`observe`)."""

    def __init__(
        self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._learned: OrderedDict[str, _Learned] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def __len__(self) -> int:
        return len(self._learned)

    def factor(self, key: str) -> float:
        """What ``key``'s prompt estimates are multiplied by (1.0: none learned)."""
        learned = self._learned.get(key)
        return 1.0 if learned is None else learned.factor

    def observe(self, key: str, estimate: int, actual: int) -> None:
        """A settlement of ``key``: its prompt was estimated (uncalibrated) at
        ``estimate`` tokens and the engine counted ``actual``."""
        if estimate < MIN_ESTIMATE or actual < 0:
            return
        ratio = min(actual / estimate, MAX_FACTOR)
        learned = self._learned.get(key)
        if learned is None:
            if ratio <= SETTLED:
                return
            self._learned[key] = _Learned(ratio, self._clock())
            if len(self._learned) > self._max_keys:
                self._learned.popitem(last=False)
            return
        self._learned.move_to_end(key)
        if ratio > learned.factor:  # raised at once
            learned.factor = ratio
            learned.since = self._clock()
            learned.seen = 0
            learned.peak = 1.0
            return
        learned.seen += 1
        if ratio > learned.peak:
            learned.peak = ratio
        if learned.seen < DECAY_AFTER:
            return
        now = self._clock()
        if now - learned.since < DECAY_INTERVAL_S:
            return
        lowered = max(learned.peak, 1.0 + (learned.factor - 1.0) / 2)
        if lowered <= SETTLED:
            del self._learned[key]
            return
        learned.factor = lowered
        learned.since = now
        learned.seen = 0
        learned.peak = 1.0


def calibrated(prompt: int, factor: float) -> int:
    """``prompt`` tokens times ``factor``, rounded up (``prompt`` itself at 1)."""
    if factor <= 1.0:
        return prompt
    scaled = prompt * factor
    whole = int(scaled)
    return whole if whole == scaled else whole + 1
