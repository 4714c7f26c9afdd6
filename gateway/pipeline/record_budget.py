"""A worker's budget of stored-response bytes decoded at once.

A stored record (up to ``responses.max_stored_bytes``, 8 MiB by default) decodes to
Python objects of up to ~24x its bytes. :class:`gateway.pipeline.response_records.OwnerGate`
bounds how many one key loads at once (:data:`LOADS_PER_KEY`), nothing across keys
nor for retrievals: a few keys asking for their largest records at once made a worker
hold GBs. Every load now holds its record's bytes of this budget from before it is
decoded until its caller is done with the decoded record (a follow-up: once admitted
and its conversation encoded; a retrieval: once written), and waits, first come first
served, while the budget is spent. A record larger than the whole budget waits for
all of it and is then decoded alone.
"""

from __future__ import annotations

import asyncio
from collections import deque

LOADED_RECORDS = 2
"""The budget, in records of ``responses.max_stored_bytes``: two of the largest decoded
at once (each up to ~24x its bytes), any number of small ones."""


class ByteBudget:
    """At most ``total`` bytes held at once; :meth:`acquire` waits in turn (FIFO)."""

    __slots__ = ("_held", "_total", "_waiting")

    def __init__(self, total: int) -> None:
        self._total = total
        self._held = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def held(self) -> int:
        return self._held

    async def acquire(self, size: int) -> int:
        """Hold ``size`` bytes (at most the whole budget), waiting for them; the bytes
        held, to :meth:`release`."""
        size = min(size, self._total)
        if not self._waiting and self._held + size <= self._total:
            self._held += size
            return size
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((size, turn))
        try:
            await turn
        except BaseException:  # cancelled: granted meanwhile, or still in line
            if turn.done() and not turn.cancelled():
                self.release(size)
            else:
                if (size, turn) in self._waiting:  # else _grant passed it by already
                    self._waiting.remove((size, turn))
                self._grant()
            raise
        return size

    def release(self, size: int) -> None:
        self._held -= size
        self._grant()

    def _grant(self) -> None:
        waiting = self._waiting
        while waiting and self._held + waiting[0][0] <= self._total:
            size, turn = waiting.popleft()
            if turn.done():  # cancelled, its waiter not yet resumed: it leaves the line
                continue
            self._held += size
            turn.set_result(None)
