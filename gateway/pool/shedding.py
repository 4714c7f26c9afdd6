"""Admission control: when every engine of a model is saturated, wait in a fair queue, then shed.

An engine is *saturated* when this gateway has ``max_in_flight`` requests on it,
or its own queue (``vllm:num_requests_waiting``, scraped) holds ``max_waiting``
(either limit may be off). A request for a model whose engines are all
saturated waits in the gateway, at most ``queue_timeout_s`` and behind at most
``queue_size`` others, for one of them to free up; otherwise it is answered 503
``overloaded`` with ``Retry-After``, rather than piled onto vLLM's queue where it
would only raise everyone's latency.

Who goes next is decided by a :class:`~gateway.pool.fair_queue.FairQueue` per
model: the earliest tier (the key's priority, lowered by the client if it asked)
first, and within a tier the keys in turn, so one tenant's flood cannot starve
another's. Room is *handed* to exactly the waiters chosen, one per free slot
(no thundering herd): when a request leaves an engine, and every 200 ms while
anyone waits (an engine queue that drained elsewhere frees room without any
release here). A request arriving while others wait queues behind them even if
it sees room, so it cannot jump the queue. A waiter handed room it can no longer
use (the room went elsewhere before it ran) goes back to the front of its line;
one that gave up after being handed room passes it on. A full queue sheds the
waiter with the weakest claim rather than the newcomer when the newcomer's is
stronger (:meth:`~gateway.pool.fair_queue.FairQueue.evict_for`: a later tier, or
a key of the same tier holding two more waiters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from gateway.config.models import OverloadSettings
from gateway.config.priority import DEFAULT_PRIORITY
from gateway.errors import OverloadedError, retry_after
from gateway.observability.metrics import GatewayMetrics
from gateway.pool.engine_pool import EnginePool
from gateway.pool.fair_queue import FairQueue
from gateway.routing.policies import EndpointView

_RECHECK_S = 0.2
_NO_ENGINES_ROOM = 1 << 30
"""Room reported for a model with no engine at all: nobody waits for engines that do
not exist (the forwarder answers that no engine is available)."""
ANONYMOUS_KEY = "anonymous"


class LoadGate:
    def __init__(
        self,
        pool: EnginePool,
        limits: Mapping[str, OverloadSettings],
        default: OverloadSettings,
        metrics: GatewayMetrics,
    ) -> None:
        self._pool = pool
        self._limits = limits
        self._default = default
        self._metrics = metrics
        self._queues: dict[str, FairQueue[asyncio.Future[None]]] = {}
        self._handed: dict[str, int] = {}
        """Per model: waiters handed room that have not run yet (the room is theirs)."""
        self._waiters = 0
        self._recheck: asyncio.TimerHandle | None = None
        pool.on_release(self._wake)

    async def enter(
        self, model: str, key: str = ANONYMOUS_KEY, priority: int = DEFAULT_PRIORITY
    ) -> None:
        """Return when an engine of ``model`` has room for this request (the caller takes
        it in the same loop turn); raise OverloadedError otherwise. ``key`` and
        ``priority`` place the request in the fair queue (lower priority: earlier)."""
        limits = self._limits.get(model, self._default)
        if limits.max_in_flight is None and limits.max_waiting is None:
            return
        queue = self._queues.get(model)
        handed = self._handed.get(model, 0)
        if not queue and not handed and self._room(model, limits) > 0:
            return
        if queue is None:
            queue = self._queues[model] = FairQueue()
        if len(queue) + handed >= limits.queue_size:
            displaced = queue.evict_for(key, priority)
            if displaced is None:
                raise self._shed(model, limits, "its queue is full")
            if not displaced.done():  # (done: a cancelled waiter that had not left yet)
                displaced.set_exception(_Displaced())  # its waiter answers 503, counted
        await self._wait_turn(model, key, priority, limits, queue)

    async def _wait_turn(
        self,
        model: str,
        key: str,
        priority: int,
        limits: OverloadSettings,
        queue: FairQueue[asyncio.Future[None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        queue.push(key, priority, turn)
        self._waiters += 1
        gauge = self._metrics.admission_queue.labels(model)
        gauge.inc()
        used = False
        try:
            self._dispatch(model)  # room may be free already (an engine queue drained)
            self._arm_recheck(loop)
            async with asyncio.timeout(limits.queue_timeout_s):
                while True:
                    await turn
                    used = True
                    self._handed[model] -= 1
                    if self._room(model, limits) - self._handed[model] > 0:
                        return
                    # The room went elsewhere before this request ran: first in line again.
                    turn = loop.create_future()
                    used = False
                    queue.push_front(key, priority, turn)
        except _Displaced:
            why = "its queue is full of requests of an earlier tier or a quieter key"
            raise self._shed(model, limits, why) from None
        except TimeoutError:
            why = f"no engine freed up in {limits.queue_timeout_s:g} s"
            raise self._shed(model, limits, why) from None
        finally:
            self._waiters -= 1
            gauge.dec()
            handed = turn.done() and not turn.cancelled() and turn.exception() is None
            if handed and not used:
                self._handed[model] -= 1  # handed room, gave up before using it: pass it on
                self._dispatch(model)
            elif not turn.done() or turn.cancelled():
                queue.remove(key, priority, turn)

    def _room(self, model: str, limits: OverloadSettings) -> int:
        """Requests the model's engines can take now: free slots under ``max_in_flight``
        (one per engine under ``max_waiting`` alone, whose queue is only scraped)."""
        views = self._pool.snapshot(model)
        if not views:
            return _NO_ENGINES_ROOM
        return sum(_room(view, limits) for view in views)

    def _dispatch(self, model: str) -> None:
        """Hand the room ``model`` has to the waiters whose turn it is, one each."""
        queue = self._queues.get(model)
        if not queue:
            return
        limits = self._limits.get(model, self._default)
        handed = self._handed.get(model, 0)
        room = self._room(model, limits) - handed
        while room > 0 and queue:
            turn = queue.pop()
            if turn.done():  # its request was cancelled and has not left the queue yet
                continue
            turn.set_result(None)
            handed += 1
            room -= 1
        self._handed[model] = handed

    def _wake(self) -> None:
        """A request left an engine: its room goes to the next waiter (hot path: nothing
        to do unless someone waits)."""
        if self._waiters:
            for model in self._queues:
                self._dispatch(model)

    def _arm_recheck(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._recheck is None and self._waiters:
            self._recheck = loop.call_later(_RECHECK_S, self._rechecked, loop)

    def _rechecked(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every 200 ms while anyone waits: room that appeared without a release here
        (an engine's queue drained, an engine came back)."""
        self._recheck = None
        self._wake()
        self._arm_recheck(loop)

    def _shed(self, model: str, limits: OverloadSettings, why: str) -> OverloadedError:
        self._metrics.shed.labels(model).inc()
        return OverloadedError(
            f"Every engine of `{model}` is saturated and {why}; retry shortly.",
            headers=retry_after(limits.retry_after_s),
        )


class _Displaced(Exception):
    """Set on a waiter's turn when a newcomer with a stronger claim took its place."""


def _room(view: EndpointView, limits: OverloadSettings) -> int:
    if limits.max_waiting is not None and view.waiting >= limits.max_waiting:
        return 0
    if limits.max_in_flight is not None:
        return max(0, limits.max_in_flight - view.in_flight)
    return 1
