"""A hostile tenant against its concurrency limit, through a real gateway, redis-server
and a slow stub engine (every answer waits ``TTFT_MS`` before its first token).

A key with ``max_concurrent: 2`` tries to get more than two requests running at the
engine at once, and to keep a slot after its request is gone: HTTP pipelining (several
requests in one write), HTTP/1.0 connections, many connections at once, streams held
open and never read, clients that leave at each stage, cache hits, the Responses API
with ``store`` and vLLM's own routes. After each, the key's slots are free again, and
the stub (its ``in_flight`` counter, sampled by a thread) never saw more than two of
its requests at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
TTFT_MS = 400
LIMIT = 2
KEY = f"sk-hunt2-conc-{RUN}-0123456789"
STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
CHAT = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class PeakWatch:
    """Samples the stub's ``in_flight`` in a thread; ``peak`` is the most it saw."""

    def __init__(self, engine: Stub) -> None:
        self._engine = engine
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                seen = client.get(f"{self._engine.url}/stub/stats").json()["in_flight"]
                self.peak = max(self.peak, seen)
                self._stop.wait(0.01)  # a sample each 10 ms leaves the stub its CPU

    def __enter__(self) -> PeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--ttft-ms", str(TTFT_MS))


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [{"name": f"conc-{RUN}", "key": KEY, "max_concurrent": LIMIT}],
        },
        "cache": {"enabled": True},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("tenant-hunt2"))


def connect(gateway: Gateway) -> socket.socket:
    host, port = gateway.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def raw_post(
    body: dict[str, Any], version: bytes = b"1.1", path: bytes = b"/v1/chat/completions"
) -> bytes:
    payload = orjson.dumps(body)
    head = (
        b"POST %s HTTP/%s\r\nhost: x\r\nauthorization: Bearer %s\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n"
    ) % (path, version, KEY.encode(), len(payload))
    return head + payload


def statuses(received: bytes) -> list[int]:
    """The status codes of every answer in ``received`` (an answer's body is JSON, so
    no body holds a status line's bytes)."""
    return [int(status) for status in STATUS_LINE.findall(received)]


def read_all(conn: socket.socket, answers: int) -> bytes:
    received = b""
    while len(statuses(received)) < answers or not received.endswith(b"}"):
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            raise AssertionError(f"{answers} answers expected, got: {received!r}") from None
        if not chunk:
            break
        received += chunk
    return received


def chat(gateway: Gateway, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body or CHAT,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )


def engine_counted_more(engine: Stub, before: int) -> bool:
    return int(engine.stats()["requests"]) > before


def slots_free(gateway: Gateway) -> None:
    """Both slots come back: two requests at once are both served."""

    async def two() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.base_url}/chat/completions",
                        json=CHAT,
                        headers={"Authorization": f"Bearer {KEY}"},
                    )
                    for _ in range(LIMIT)
                )
            )
        return [a.status_code for a in answers]

    deadline = time.monotonic() + 10
    while (codes := asyncio.run(two())) != [200] * LIMIT:
        assert time.monotonic() < deadline, f"the key's slots never came back: {codes}"


def test_pipelined_requests_run_one_at_a_time_and_free_their_slots(
    gateway: Gateway, engine: Stub
) -> None:
    with PeakWatch(engine) as watch, connect(gateway) as conn:
        conn.sendall(b"".join(raw_post({**CHAT, "seed": i}) for i in range(6)))
        codes = statuses(read_all(conn, 6))
    assert codes == [200] * 6  # answered in turn: one slot at a time
    assert watch.peak <= LIMIT
    slots_free(gateway)


def test_http10_connections_at_once_get_no_more_than_the_limit(
    gateway: Gateway, engine: Stub
) -> None:
    conns = [connect(gateway) for _ in range(6)]
    with PeakWatch(engine) as watch:
        for conn in conns:
            conn.sendall(raw_post(CHAT, b"1.0"))
        codes = sorted(statuses(read_all(conn, 1))[0] for conn in conns)
    for conn in conns:
        conn.close()
    assert set(codes) == {200, 429}, codes
    assert watch.peak <= LIMIT
    slots_free(gateway)


def test_many_connections_at_once_get_no_more_than_the_limit(
    gateway: Gateway, engine: Stub
) -> None:
    async def many() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.base_url}/chat/completions",
                        json={**CHAT, "seed": i},
                        headers={"Authorization": f"Bearer {KEY}"},
                    )
                    for i in range(20)
                )
            )
        return [a.status_code for a in answers]

    with PeakWatch(engine) as watch:
        codes = asyncio.run(many())
    assert set(codes) == {200, 429}, codes  # (some may come after earlier ones ended)
    assert watch.peak <= LIMIT
    slots_free(gateway)


def test_unread_streams_hold_their_slots_and_free_them_on_close(
    gateway: Gateway, engine: Stub
) -> None:
    stream = {**CHAT, "stream": True, "max_tokens": 5000, "stub": {"tokens": 5000, "itl_ms": 1}}
    conns = [connect(gateway) for _ in range(LIMIT)]
    for conn in conns:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.sendall(raw_post(stream))
    holds_soon(lambda: engine.stats()["in_flight"] >= LIMIT, 10, "the streams never started")
    refused = chat(gateway)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "concurrency"
    for conn in conns:
        conn.close()
    slots_free(gateway)


@pytest.mark.parametrize("stage", ["body_unsent", "engine_call", "streaming"])
def test_a_client_leaving_at_any_stage_frees_its_slot(
    gateway: Gateway, engine: Stub, stage: str
) -> None:
    for _ in range(LIMIT + 1):
        conn = connect(gateway)
        if stage == "body_unsent":
            request = raw_post(CHAT)
            conn.sendall(request[:-5])  # the body's last bytes never come
            time.sleep(0.05)
        elif stage == "engine_call":
            before = engine.stats()["requests"]
            conn.sendall(raw_post(CHAT))
            holds_soon(functools.partial(engine_counted_more, engine, before), 10)
        else:
            conn.sendall(raw_post({**CHAT, "stream": True, "stub": {"tokens": 500, "itl_ms": 5}}))
            assert conn.recv(100).startswith(b"HTTP/1.1 200")
        conn.close()
    slots_free(gateway)


def test_cache_hits_and_followers_free_their_slots(gateway: Gateway, engine: Stub) -> None:
    body = {**CHAT, "temperature": 0, "seed": 424242}
    assert chat(gateway, body).status_code == 200  # fills the cache

    async def hits() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.base_url}/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {KEY}"},
                    )
                    for _ in range(8)
                )
            )
        return [a.status_code for a in answers]

    codes = asyncio.run(hits())
    assert set(codes) <= {200, 429} and 200 in codes, codes
    slots_free(gateway)


def test_responses_with_store_free_their_slots(gateway: Gateway, engine: Stub) -> None:
    body = {"model": STUB_MODEL, "input": "hi", "store": True, "max_output_tokens": 4}
    with PeakWatch(engine) as watch:
        conns = [connect(gateway) for _ in range(5)]
        for conn in conns:
            conn.sendall(raw_post(body, path=b"/v1/responses"))
        codes = sorted(statuses(read_all(conn, 1))[0] for conn in conns)
        for conn in conns:
            conn.close()
    assert codes.count(200) <= LIMIT and set(codes) <= {200, 429}, codes
    assert watch.peak <= LIMIT
    slots_free(gateway)


def test_a_passthrough_route_takes_and_frees_a_slot(gateway: Gateway) -> None:
    body = {"model": STUB_MODEL, "prompt": "hello there"}
    for _ in range(LIMIT + 3):
        with contextlib.closing(connect(gateway)) as conn:
            conn.sendall(raw_post(body, path=b"/tokenize"))
            assert statuses(read_all(conn, 1)) == [200]
    slots_free(gateway)


@pytest.fixture(scope="module")
def second(
    engine: Stub, redis_url: str, gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Another gateway process with the same key, on the same Redis (a second replica)."""
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [{"name": f"conc-{RUN}", "key": KEY, "max_concurrent": LIMIT}],
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("tenant-hunt2-second"))


def test_two_replicas_together_run_no_more_than_the_limit(
    gateway: Gateway, second: Gateway, engine: Stub
) -> None:
    async def both() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{(gateway, second)[i % 2].base_url}/chat/completions",
                        json={**CHAT, "seed": i},
                        headers={"Authorization": f"Bearer {KEY}"},
                    )
                    for i in range(12)
                )
            )
        return [a.status_code for a in answers]

    with PeakWatch(engine) as watch:
        codes = asyncio.run(both())
    assert set(codes) == {200, 429}, codes
    assert watch.peak <= LIMIT
    slots_free(second)
