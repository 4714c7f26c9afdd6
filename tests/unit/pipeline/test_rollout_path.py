"""Shadow copies on the request path (:func:`gateway.pipeline.rollout_path.shadow_sender`):
a copy waits at the saturated model's load gate behind every client's request, of
whatever tier, and is the waiter shed when a client needs its place in a full queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from gateway.config.settings import Settings
from gateway.errors import OverloadedError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.assembly import build_forwarder, routing_table
from gateway.pipeline.exchange import Exchange
from gateway.pipeline.forwarding import Attempt, Forwarder
from gateway.pipeline.rollout_path import shadow_sender
from gateway.pool.engine_pool import EnginePool
from gateway.upstream.fake import FakeRequest, FakeUpstream, Scripted

MODEL = "m"
PATH = "/v1/chat/completions"


class Saturated:
    """One engine of ``MODEL`` that takes one request at a time; the first is held
    until :attr:`release` is set. :attr:`seen` lists the ``tag`` of each request the
    engine received, in order."""

    def __init__(self, queue_size: int = 10) -> None:
        self.settings = Settings.model_validate(
            {
                "models": [
                    {
                        "name": MODEL,
                        "endpoints": ["http://engine"],
                        "overload": {
                            "max_in_flight": 1,
                            "queue_size": queue_size,
                            "queue_timeout_s": 5,
                        },
                    }
                ]
            }
        )
        self.metrics = GatewayMetrics()
        self.pool = EnginePool({MODEL: ("http://engine",)})
        self.release = asyncio.Event()
        self.seen: list[str] = []
        self.forwarder: Forwarder = build_forwarder(
            self.settings, self.pool, FakeUpstream(self._answer), self.metrics
        )
        self.send = shadow_sender(
            self.pool, self.forwarder, routing_table(self.settings), self.metrics
        )

    def _answer(self, request: FakeRequest) -> Scripted:
        body = request.json()
        assert isinstance(body, dict)
        self.seen.append(body["tag"])
        first = len(self.seen) == 1
        return Scripted(body=b"{}", gate=self.release if first else None)

    async def client(self, tag: str, key: str, priority: int) -> None:
        exchange = Exchange("chat", self.pool, self.metrics)
        policy, _ = routing_table(self.settings).for_model(MODEL)
        attempt = Attempt(MODEL, PATH, _body(tag), tag, policy, None, key=key, priority=priority)
        try:
            await self.forwarder.complete(exchange, attempt)
        finally:
            exchange.drop_engine()

    def queued(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "vgate_admission_queue_depth", {"model": MODEL}
        )
        return value or 0.0


def _body(tag: str) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [], "tag": tag})


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0)


async def test_a_shadow_copy_waits_behind_a_low_tier_client() -> None:
    engine = Saturated()
    holder = asyncio.create_task(engine.client("holder", "a", 0))
    await until(lambda: engine.seen == ["holder"])
    copy = asyncio.create_task(engine.send(MODEL, PATH, _body("shadow"), "copy-1"))
    await until(lambda: engine.queued() == 1.0)
    late = asyncio.create_task(engine.client("low-tier", "b", 10))
    await until(lambda: engine.queued() == 2.0)
    engine.release.set()
    await asyncio.wait_for(asyncio.gather(holder, copy, late), 2)
    assert engine.seen == ["holder", "low-tier", "shadow"]


async def test_a_shadow_copy_gives_its_place_in_a_full_queue_to_a_client() -> None:
    engine = Saturated(queue_size=1)
    holder = asyncio.create_task(engine.client("holder", "a", 0))
    await until(lambda: engine.seen == ["holder"])
    copy = asyncio.create_task(engine.send(MODEL, PATH, _body("shadow"), "copy-1"))
    await until(lambda: engine.queued() == 1.0)
    client = asyncio.create_task(engine.client("low-tier", "b", 10))
    with pytest.raises(OverloadedError):
        await asyncio.wait_for(copy, 2)
    engine.release.set()
    await asyncio.wait_for(asyncio.gather(holder, client), 2)
    assert engine.seen == ["holder", "low-tier"]
