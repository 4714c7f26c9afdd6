"""The order waiting requests are admitted in: tier first, then keys in turn.

A tier is a vLLM priority (lower: earlier, see :mod:`gateway.config.priority`).
Every waiter of a lower-numbered tier goes before any waiter of a higher one.
Within a tier, the keys with waiters take turns, one request each (round-robin:
deficit round-robin with a quantum of one request, every request counting the
same), and each key's own requests keep their arrival order. A key that floods
the queue therefore gets one turn in each round like any other key of its tier,
instead of a share proportional to what it sent.

A full queue (the gate's ``queue_size``) sheds by the same order: a newcomer takes
the place of the newest waiter of a *later* tier, or of a key of its own tier that
holds at least two more waiters than the newcomer's key would
(:meth:`FairQueue.evict_for`), so a low-tier or one-tenant flood that fills the
queue cannot get the requests it was meant to let through refused at the door.

Pure and synchronous: :class:`gateway.pool.shedding.LoadGate` keeps one queue per
model and decides *when* to admit; this decides *who*.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Waiters (any object) by tier, then round-robin across keys, FIFO per key."""

    __slots__ = ("_size", "_tiers")

    def __init__(self) -> None:
        self._tiers: dict[int, OrderedDict[str, deque[T]]] = {}
        """Tier → its keys in the order of their next turn → each key's waiters."""
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def push(self, key: str, tier: int, item: T) -> None:
        """``item`` waits behind ``key``'s earlier ones; a key new to its tier takes its
        turn after the keys already waiting there."""
        keys = self._tiers.setdefault(tier, OrderedDict())
        waiting = keys.get(key)
        if waiting is None:
            waiting = keys[key] = deque()
        waiting.append(item)
        self._size += 1

    def push_front(self, key: str, tier: int, item: T) -> None:
        """``item`` goes first again: it was admitted but could not use its turn (the
        room it was given went elsewhere), so it keeps its place and its key's turn."""
        keys = self._tiers.setdefault(tier, OrderedDict())
        waiting = keys.get(key)
        if waiting is None:
            waiting = keys[key] = deque()
        waiting.appendleft(item)
        keys.move_to_end(key, last=False)
        self._size += 1

    def pop(self) -> T:
        """The next waiter to admit: the earliest of the key whose turn it is, in the
        earliest tier. Its key's turn then passes to the next key of the tier.
        IndexError when empty."""
        if not self._size:
            raise IndexError("pop from an empty FairQueue")
        tier = min(self._tiers)
        keys = self._tiers[tier]
        key, waiting = next(iter(keys.items()))
        item = waiting.popleft()
        if waiting:
            keys.move_to_end(key)
        else:
            del keys[key]
            if not keys:
                del self._tiers[tier]
        self._size -= 1
        return item

    def evict_for(self, key: str, tier: int) -> T | None:
        """Take out the waiter a newcomer of ``key`` at ``tier`` displaces from a full
        queue, or None when every waiter has as good a claim as the newcomer: the
        newest waiter of the heaviest key of the latest tier (of equals, the one whose
        turn comes last) when that tier is later
        than ``tier``; within ``tier`` itself, of its heaviest key only if that key holds
        at least two more waiters than ``key`` (a swap then leaves it no fewer).
        O(keys of one tier)."""
        if not self._tiers:
            return None
        latest = max(self._tiers)
        if latest < tier:
            return None
        keys = self._tiers[latest]
        # The heaviest key; of equals, the one whose turn comes last.
        heaviest, waiting = max(reversed(keys.items()), key=lambda item: len(item[1]))
        if latest == tier:
            own = keys.get(key)
            if len(waiting) <= (len(own) if own is not None else 0) + 1:
                return None
        item = waiting.pop()
        if not waiting:
            del keys[heaviest]
            if not keys:
                del self._tiers[latest]
        self._size -= 1
        return item

    def remove(self, key: str, tier: int, item: T) -> bool:
        """Take ``item`` out (its request gave up waiting); False when it is not queued."""
        keys = self._tiers.get(tier)
        waiting = keys.get(key) if keys is not None else None
        if waiting is None or keys is None:
            return False
        try:
            waiting.remove(item)
        except ValueError:
            return False
        if not waiting:
            del keys[key]
            if not keys:
                del self._tiers[tier]
        self._size -= 1
        return True
