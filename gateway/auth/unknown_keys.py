"""A bounded, short-lived memory of keys found to be unknown (a negative cache).

A key the local copy of the key store does not know costs a check against the
store before it is refused (it may have been made a moment ago on another
replica). Remembering the refusal for a short while means that a client
repeating a wrong key, or flooding the gateway with one, costs no Redis round
trip per request.

It never hides a key that exists: the directory consults its copy of the store
first and this memory only after, and forgets everything whenever the store's
version moves (a key was created or revoked). Bounded in both directions: at
most ``max_entries`` digests (the oldest are forgotten first) and each for at
most ``ttl_s`` seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class UnknownKeys:
    """Digests recently found unknown, each remembered for ``ttl_s`` seconds."""

    def __init__(
        self, max_entries: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max = max_entries
        self._ttl_s = ttl_s
        self._clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()
        """Digest → when it is forgotten, oldest first (insertion order: one TTL for all)."""

    def __contains__(self, digest: str) -> bool:
        until = self._until.get(digest)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._until[digest]
        return False

    def __len__(self) -> int:
        return len(self._until)

    def add(self, digest: str) -> None:
        """Remember ``digest`` as unknown; past ``max_entries``, the oldest go first."""
        if self._max == 0:
            return
        now = self._clock()
        self._until.pop(digest, None)
        self._until[digest] = now + self._ttl_s
        while len(self._until) > self._max:
            self._until.popitem(last=False)
        self._expire(now)

    def clear(self) -> None:
        self._until.clear()

    def _expire(self, now: float) -> None:
        """Drop entries whose time is up (they sit at the front: one TTL for all)."""
        while self._until:
            digest, until = next(iter(self._until.items()))
            if until > now:
                return
            del self._until[digest]
