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

Prompts estimated under :data:`MIN_ESTIMATE` tokens teach together: the chat template's
own tokens (role markers, a default system prompt) dominate any one of them, and a key
sending many small crafted prompts (236 CJK characters: estimated at 63 tokens, counted
up to ~710 by byte-level BPE) used ~11 times what it was charged at admission, and no
settlement of theirs taught anything. Each key's small settlements are pooled until
their estimates add up to :data:`MIN_ESTIMATE`; the pool then teaches as one settlement,
its count less :data:`SMALL_ALLOWANCE` per request (what a template may add), so honest
short prompts do not raise a factor however many there are. Usage that is not
believable teaches nothing. The state is this process's: an LRU of at most
:data:`MAX_KEYS` keys whose factor is above 1 (keys at 1 hold no entry), and one of as
many keys' pools. Each replica learns on its own from the requests it settles. Admission
looks a factor up once per request of a key with a ``tpm`` (one dict lookup); a
settlement updates it (and a small one its key's pool) in O(1).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MIN_ESTIMATE = 64
"""Prompts estimated below this many tokens are not learned from one by one (the chat
template's own tokens dominate their usage) but pooled until their estimates add up to
this many."""
SMALL_ALLOWANCE = 32
"""Tokens per pooled request taken off the pool's count before it teaches: about what a
chat template adds to any request (role markers, a default system prompt such as
Qwen's, Llama's dated preamble), which a short honest prompt is mostly made of."""
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


class _Pool:
    """One key's small settlements not yet learned from: their estimates and counts
    (emptied, not dropped, once they teach)."""

    def __init__(self) -> None:
        self.estimate = 0
        self.actual = 0
        self.requests = 0


class PromptCalibration:
    """Each key's prompt factor (:func:`factor`), learned from settlements
    (:meth:`observe`)."""

    def __init__(
        self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._learned: OrderedDict[str, _Learned] = OrderedDict()
        self._pools: OrderedDict[str, _Pool] = OrderedDict()
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
        ``estimate`` tokens and the engine counted ``actual``. Under
        :data:`MIN_ESTIMATE`, pooled with the key's other small ones (:class:`_Pool`)."""
        if estimate <= 0 or actual < 0:
            return
        if estimate < MIN_ESTIMATE:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool()
                if len(self._pools) > self._max_keys:
                    self._pools.popitem(last=False)
            else:
                self._pools.move_to_end(key)
            pool.estimate += estimate
            pool.actual += actual
            pool.requests += 1
            if pool.estimate < MIN_ESTIMATE:
                return
            estimate = pool.estimate
            actual = max(pool.actual - SMALL_ALLOWANCE * pool.requests, 0)
            pool.estimate = pool.actual = pool.requests = 0  # kept: no allocation per pool
        self._learn(key, estimate, actual)

    def _learn(self, key: str, estimate: int, actual: int) -> None:
        """One settlement (or pool) of at least :data:`MIN_ESTIMATE` tokens teaches."""
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
