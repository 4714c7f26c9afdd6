"""A single-flight leader cut for reading too slowly (``cache.max_lag_bytes``) is not
waited on: its connection is reset as soon as it is cut, not at the send deadline
(``server.send_timeout_s``, two minutes here), its followers finish from the one engine
call, and what its request held is released with them: its key's only concurrency
slot (``max_concurrent: 1``) is free again while its client still has read nothing.

Before, the cut leader's stream waited for its client to take bytes again: its
request, its engine slot, its concurrency slot and its connection were held until the
send deadline reset it. The cut is counted in ``vgate_slow_clients_cut_total``.

The leader is a raw socket with a receive buffer as small as the kernel allows, which
reads nothing; its followers ask under another key (the cache is shared between keys)."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_stub
from tests.integration.cut_world import (
    SEND_TIMEOUT_S,
    cut_gateway,
    cuts,
    key_answered,
    silent_client,
    was_reset,
)

RUN = uuid.uuid4().hex[:8]
LEADER_KEY = "sk-cut-leader-0123456789"
FOLLOWER_KEY = "sk-cut-follower-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys: list[dict[str, Any]] = [
        {"name": f"leader-{RUN}", "key": LEADER_KEY, "max_concurrent": 1},
        {"name": f"follower-{RUN}", "key": FOLLOWER_KEY},
    ]
    directory: Path = tmp_path_factory.mktemp("cut-leader")
    yield from cut_gateway(engine, redis_url, directory, RUN, keys)


def body_of(name: str, tokens: int, itl_ms: float = 0.0) -> dict[str, Any]:
    """A stream request; the engine thinks 1 s first, so that an identical request sent
    once this one is at the engine joins its flight."""
    return {"model": STUB_MODEL, "temperature": 0, "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"{RUN} {name}"}],
            "stub": {"tokens": tokens, "ttft_ms": 1000, "itl_ms": itl_ms}}  # fmt: skip


def silent_leader(gateway: Gateway, engine: Stub, body: dict[str, Any]) -> socket.socket:
    """A client of the leader's key that asks for ``body`` and reads nothing; returned
    once its request is at the engine (it leads the flight)."""
    in_flight = engine.stats()["in_flight"]
    sock = silent_client(gateway, LEADER_KEY, body)
    holds_soon(lambda: engine.stats()["in_flight"] > in_flight)
    return sock


def follow(gateway: Gateway, body: dict[str, Any]) -> bytes:
    """An identical request's stream under the follower's key, read as fast as it comes."""
    received = bytearray()
    headers = {"authorization": f"Bearer {FOLLOWER_KEY}"}
    with (
        httpx.Client(timeout=15) as client,
        client.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers
        ) as reply,
    ):
        assert reply.status_code == 200
        for chunk in reply.iter_bytes():
            received += chunk
    return bytes(received)


def test_a_cut_leader_is_hung_up_on_and_its_slot_freed_long_before_the_send_deadline(
    gateway: Gateway, engine: Stub
) -> None:
    body = body_of("cut", 30_000, itl_ms=0.1)  # ~6.7 MB of events
    requests = engine.stats()["requests"]
    with silent_leader(gateway, engine, body) as leader:
        started = time.monotonic()
        assert not key_answered(gateway, LEADER_KEY, RUN)  # its one slot is the leader's
        followed = follow(gateway, body)
        assert followed.rstrip().endswith(b"data: [DONE]")
        assert followed.count(b'"finish_reason":"length"') == 1  # the whole answer
        holds_soon(lambda: was_reset(leader), 10.0, "the cut leader was not hung up on")
        holds_soon(
            lambda: key_answered(gateway, LEADER_KEY, RUN), 10.0, "the leader's slot stayed taken"
        )
        assert time.monotonic() - started < SEND_TIMEOUT_S / 4
    assert engine.stats()["requests"] == requests + 2  # one call for both, then the probe
    assert cuts(gateway, "leader") == 1.0
