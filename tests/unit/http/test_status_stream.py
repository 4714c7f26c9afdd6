"""The status page's event stream and feed without a server: frames, the stream cap,
a client that leaves or stalls, the stream's lifetime, and what a snapshot shows."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from starlette.types import Message

from engines.stats import EngineStats
from gateway.config.settings import Settings
from gateway.http.status import StatusStream
from gateway.http.status_feed import StatusFeed
from gateway.observability.metrics import GatewayMetrics
from gateway.pool.engine_pool import EnginePool

SECRET_URL = "http://operator:0123456789@10.0.0.5:8000"


def settings() -> Settings:
    return Settings.model_validate(
        {
            "models": [
                {"name": "stable", "endpoints": [SECRET_URL]},
                {"name": "canary", "endpoints": ["http://10.0.0.6:8000"]},
            ],
            "rollouts": [
                {
                    "model": "chat",
                    "variants": [
                        {"model": "stable", "weight": 90},
                        {"model": "canary", "weight": 10, "canary": True},
                    ],
                }
            ],
        }
    )


def feed(weights: Mapping[str, float] | None = None, max_streams: int = 2) -> StatusFeed:
    config = settings()
    pool = EnginePool({m.name: m.endpoints for m in config.models})
    pool.set_stats(SECRET_URL, EngineStats(running=3, waiting=2, kv_cache_usage=0.5))
    metrics = GatewayMetrics()
    metrics.observe_request("stable", "chat", 200, 0.1)
    metrics.tokens_charged.labels("team-a").inc(10)
    metrics.tokens_charged.labels("team-b").inc(30)

    class Live:
        def weights(self, rollout: str) -> Mapping[str, float]:
            return weights or {}

    source = Live() if weights is not None else None
    return StatusFeed(config, pool, metrics, lambda: source, max_streams=max_streams)


def test_snapshot_names_engines_without_credentials_and_keys_by_name() -> None:
    snapshot = feed().snapshot()
    raw = orjson.dumps(snapshot).decode()
    assert "0123456789" not in raw and "operator" not in raw
    by_url = {e["url"]: e for e in snapshot["engines"]}
    engine = by_url["http://10.0.0.5:8000"]
    assert (engine["running"], engine["waiting"], engine["kv_cache_usage"]) == (3, 2, 0.5)
    assert engine["models"] == [{"model": "stable", "rollout": "chat"}]
    assert [k["name"] for k in snapshot["keys"]] == ["team-b", "team-a"]
    assert [m["model"] for m in snapshot["models"]] == ["stable"]


def test_rollouts_show_live_weights_when_a_controller_runs_else_configured() -> None:
    configured = feed().snapshot()["rollouts"][0]
    assert not configured["live"]
    assert [v["weight"] for v in configured["variants"]] == [90, 10]
    live = feed({"stable": 100, "canary": 0}).snapshot()["rollouts"][0]
    assert live["live"]
    assert [(v["weight"], v["configured_weight"]) for v in live["variants"]] == [
        (100, 90),
        (0, 10),
    ]


def test_frames_are_reused_for_a_moment() -> None:
    status = feed()
    first = status.frame()
    assert first.startswith(b"data: {") and first.endswith(b"\n\n")
    assert status.frame() is first


def test_stream_cap() -> None:
    status = feed(max_streams=2)
    assert status.open_stream() and status.open_stream()
    assert not status.open_stream()
    status.close_stream()
    assert status.open_stream()


class Client:
    """An ASGI client: records what was sent; ``stall`` makes body sends hang."""

    def __init__(self, stall_after: int | None = None) -> None:
        self.messages: list[Message] = []
        self.left = asyncio.Event()
        self._stall_after = stall_after

    async def receive(self) -> Message:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        bodies = sum(1 for m in self.messages if m["type"] == "http.response.body")
        stalls = self._stall_after is not None and bodies >= self._stall_after
        if message["type"] == "http.response.body" and stalls:
            await asyncio.Event().wait()  # a client that never reads again
        self.messages.append(message)

    def frames(self) -> list[dict[str, Any]]:
        body = b"".join(m.get("body", b"") for m in self.messages if "body" in m)
        return [
            orjson.loads(line[len(b"data: ") :])
            for line in body.split(b"\n")
            if line.startswith(b"data: ")
        ]


async def run(stream: StatusStream, client: Client, timeout_s: float = 5) -> None:
    scope: dict[str, Any] = {"type": "http"}
    await asyncio.wait_for(stream(scope, client.receive, client.send), timeout_s)


async def test_stream_sends_frames_and_ends_after_its_lifetime() -> None:
    status = feed()
    assert status.open_stream()
    client = Client()
    await run(StatusStream(status, interval_s=0.01, lifetime_s=0.2), client)
    start = client.messages[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream") in start["headers"]
    assert client.messages[1]["body"].startswith(b"retry: ")
    assert len(client.frames()) >= 2
    assert client.messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert status.open_streams == 0  # its place is free again


async def test_a_client_that_leaves_ends_the_stream_and_frees_its_place() -> None:
    status = feed()
    assert status.open_stream()
    client = Client()
    task = asyncio.create_task(run(StatusStream(status, interval_s=0.01, lifetime_s=60), client))
    while len(client.frames()) < 2:
        await asyncio.sleep(0.01)
    client.left.set()
    await task
    assert status.open_streams == 0


async def test_a_stalled_client_is_dropped_after_the_send_timeout() -> None:
    status = feed()
    assert status.open_stream()
    client = Client(stall_after=2)
    stream = StatusStream(status, interval_s=0.01, lifetime_s=60, send_timeout_s=0.1)
    await run(stream, client)  # returns: it does not wait on the client for ever
    assert len(client.frames()) == 2  # the two it took; nothing queued behind the third
    assert status.open_streams == 0


@pytest.mark.parametrize("cap", [1, 3])
def test_cap_is_per_feed(cap: int) -> None:
    status = feed(max_streams=cap)
    opened = [status.open_stream() for _ in range(cap + 1)]
    assert opened == [True] * cap + [False]


def test_a_revoked_key_leaves_the_page_and_the_metrics() -> None:
    config = settings()
    pool = EnginePool({m.name: m.endpoints for m in config.models})
    metrics = GatewayMetrics()
    known = {"team-a", "team-b"}
    metrics.watch_keys(lambda: known)
    metrics.tokens_charged.labels("team-a").inc(10)
    metrics.tokens_charged.labels("team-b").inc(30)
    metrics.rate_limited.labels("team-b", "requests").inc()
    status = StatusFeed(config, pool, metrics)
    assert [k["name"] for k in status.snapshot()["keys"]] == ["team-b", "team-a"]
    known.discard("team-b")  # revoked: the key-refresh poll reloaded the copy
    assert [k["name"] for k in status.snapshot()["keys"]] == ["team-a"]
    text = metrics.render().decode()
    assert 'key="team-b"' not in text and 'vgate_tokens_charged_total{key="team-a"} 10.0' in text
