"""Shadow traffic: a share of a rollout's requests copied to another model, unseen.

A copy is drawn once the primary request has been admitted and is on its way to an
engine (a cache hit, or a request answered by an identical one in flight, is not
copied), and sent on a task of its own once the primary has ended, however it ended
(:meth:`ShadowCopy.release`, called when the request's owner closes): the client
never waits for it and never sees any of it, not its status, body or headers, and
the copy never competes with its own primary for the gateway or an engine. The copy

* is sent non-streaming (a streamed primary included): only its text is compared;
* goes to the engine at the ``low`` priority tier or later when tiers are on;
* is never cached and never charged to the caller's key (it bypasses admission and
  the cache entirely; the engine's own load gate still applies to it), so it is not
  sent at all when its primary was charged nothing (an engine refused it, a 400 say,
  or none could take it: :meth:`ShadowCopy.drop`). Sent, a tenant whose requests the
  primary's engine refuses and the shadow's serves (a prompt beyond one's context
  but within the other's) had the shadow generate for it, again and again, for free;
* is bounded: at most ``shadow.max_concurrent`` copies per rollout are in flight, and
  a copy beyond that is shed (``vgate_shadow_shed_total``), never waited for, so a slow
  shadow model cannot hold memory or slow the primaries;
* is cancelled when the gateway shuts down (:meth:`ShadowCopier.close`).

Its figures go to their own families (``vgate_shadow_requests_total``,
``vgate_shadow_request_duration_seconds``, labelled ``rollout`` and ``variant`` = the
shadow model), never to the client-facing request counters or to the rollout
controller's observations. For deterministic requests the answer is compared with the
primary's (:mod:`gateway.rollouts.agreement`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from gateway.config.priority import TIERS
from gateway.config.rollouts import RolloutSettings, ShadowSettings
from gateway.errors import GatewayError
from gateway.observability.metrics import GatewayMetrics
from gateway.protocol.exact_json import encoded_exactly
from gateway.rollouts.agreement import AgreementPair, answer_text, is_deterministic

log = logging.getLogger("vgate.shadow")

_DROPPED_FIELDS = ("stream", "stream_options")


class ShadowSend(Protocol):
    async def __call__(self, model: str, path: str, payload: bytes, request_id: str) -> bytes:
        """The shadow model's 2xx JSON answer to ``payload`` at ``path``; failures are
        raised as :class:`GatewayError`."""
        ...


class ShadowCopy:
    """A drawn copy waiting for its primary to end. ``pair`` takes the primary's text
    when the two are compared (a deterministic request), else it is None."""

    __slots__ = ("_released", "dropped", "pair")

    def __init__(self, pair: AgreementPair | None) -> None:
        self.pair = pair
        self.dropped = False
        self._released = asyncio.Event()

    def release(self) -> None:
        """The primary has ended: send the copy now (idempotent)."""
        self._released.set()

    def drop(self) -> None:
        """The primary has ended charged nothing (an engine refused it, or none could
        take it): the copy is not sent, and its slot frees at once."""
        self.dropped = True
        self._released.set()

    async def released(self) -> None:
        await self._released.wait()


class ShadowCopier:
    """Starts, bounds, measures and cancels shadow copies; see the module docstring."""

    def __init__(
        self,
        rollouts: Sequence[RolloutSettings],
        served: Mapping[str, str],
        send: ShadowSend,
        metrics: GatewayMetrics,
        draw: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._shadows: dict[str, ShadowSettings] = {
            r.model: r.shadow for r in rollouts if r.shadow is not None
        }
        self._served = served
        self._send = send
        self._metrics = metrics
        self._draw = draw
        self._clock = clock
        self._in_flight = dict.fromkeys(self._shadows, 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __bool__(self) -> bool:
        """Whether any rollout has a shadow."""
        return bool(self._shadows)

    def in_flight(self, rollout: str) -> int:
        return self._in_flight.get(rollout, 0)

    def copy(
        self, rollout: str, path: str, body: dict[str, Any], request_id: str, source: bytes = b""
    ) -> ShadowCopy | None:
        """Copy this request of ``rollout`` to its shadow, if it is drawn for one and a
        slot is free (None otherwise); the copy is sent once it is released. Never
        blocks. The slot is held from now on, so copies waiting for their primaries
        count against ``max_concurrent`` too. ``source``: the bytes ``body`` was read
        from, whose integers beyond 64 bits the copy carries exactly."""
        shadow = self._shadows.get(rollout)
        if shadow is None or self._closed or self._draw() >= shadow.share:
            return None
        if self._in_flight[rollout] >= shadow.max_concurrent:
            self._metrics.shadow_shed.labels(rollout).inc()
            return None
        payload = self._payload(shadow.model, body, source)
        pair = AgreementPair(rollout, self._metrics) if is_deterministic(body) else None
        handle = ShadowCopy(pair)
        self._in_flight[rollout] += 1
        run = self._run(rollout, shadow.model, path, payload, request_id, handle)
        task = asyncio.create_task(run)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return handle

    async def close(self) -> None:
        """Cancel every copy in flight and wait for them to end (shutdown)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _payload(self, model: str, body: dict[str, Any], source: bytes) -> bytes:
        """The copy's body. When priority tiers reach the engines (the primary's body
        carries vLLM's ``priority``), the copy goes at the ``low`` tier or later, never
        ahead of any client's request."""
        copy = {k: v for k, v in body.items() if k not in _DROPPED_FIELDS}
        copy["model"] = self._served.get(model, model)
        priority = copy.get("priority")
        if isinstance(priority, int) and not isinstance(priority, bool):
            copy["priority"] = max(priority, TIERS["low"])
        return encoded_exactly(copy, source)

    async def _run(
        self,
        rollout: str,
        model: str,
        path: str,
        payload: bytes,
        request_id: str,
        handle: ShadowCopy,
    ) -> None:
        answer: bytes | None = None
        pair = handle.pair
        started = self._clock()
        try:
            await handle.released()
            if handle.dropped:
                return  # not sent: counted nowhere (its slot is freed below)
            started = self._clock()
            answer = await self._send(model, path, payload, request_id)
            status = 200
        except GatewayError as exc:
            status = exc.status
        except Exception:  # a bug must not escape a task nobody awaits
            log.exception("shadow copy of a %s request to %s failed", rollout, model)
            status = 500
        finally:
            self._in_flight[rollout] -= 1
        metrics = self._metrics
        metrics.shadow_requests.labels(rollout, model, str(status)).inc()
        metrics.shadow_duration.labels(rollout, model).observe(self._clock() - started)
        if pair is not None:
            pair.shadow(answer_text(answer) if answer is not None else None)
