"""A single-flight follower cut for reading too slowly (``cache.max_lag_bytes``) is hung
up on as soon as it is cut, as a cut leader is (``test_cache_cut_leader``): not at the
send deadline (``server.send_timeout_s``, two minutes here). Its key's only
concurrency slot (``max_concurrent: 1``) is free again while its client still has
read nothing, and the cut is counted in ``vgate_slow_clients_cut_total``.

Before, the flight forgot the batches the cut follower still needed (its memory was
freed) but its stream stayed blocked writing to a client that took nothing: its
connection and its request's slots were held until the send deadline reset it.

The follower is a raw socket with a receive buffer as small as the kernel allows, which
reads nothing; the leader, under another key, reads as fast as the engine answers."""

from __future__ import annotations

import errno
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
MAX_LAG = 1024 * 1024
SEND_TIMEOUT_S = 120
LEADER_KEY = "sk-cutf-leader-0123456789"
FOLLOWER_KEY = "sk-cutf-follower-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "server": {"send_timeout_s": SEND_TIMEOUT_S},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"leader-{RUN}", "key": LEADER_KEY},
                {"name": f"follower-{RUN}", "key": FOLLOWER_KEY, "max_concurrent": 1},
            ],
        },
        "cache": {"enabled": True, "namespace": RUN, "max_lag_bytes": MAX_LAG, "scope": "shared"},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("cut-follower"))


def lead(gateway: Gateway, body: dict[str, Any], received: bytearray) -> None:
    """The leader's stream under the leader's key, read as fast as it comes."""
    headers = {"authorization": f"Bearer {LEADER_KEY}"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", f"{gateway.base_url}/chat/completions", json=body, headers=headers
        ) as reply,
    ):
        for chunk in reply.iter_bytes():
            received += chunk


def silent_follower(gateway: Gateway, body: dict[str, Any]) -> socket.socket:
    """A client of the follower's key that asks for ``body`` and reads nothing."""
    payload = orjson.dumps(body)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
    head += b"authorization: Bearer %s\r\n" % FOLLOWER_KEY.encode()
    head += b"content-length: %d\r\n\r\n" % len(payload)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])))
    sock.sendall(head + payload)
    return sock


def was_reset(sock: socket.socket) -> bool:
    """Whether the peer reset the connection, seen without reading (``SO_ERROR``)."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET


def follower_key_answered(gateway: Gateway) -> bool:
    """Whether the follower's key is admitted now (its one concurrency slot free)."""
    prompt = f"{RUN} again {time.monotonic()}"
    body = {"model": STUB_MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": prompt}]}
    headers = {"authorization": f"Bearer {FOLLOWER_KEY}", "cache-control": "no-store"}
    reply = httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=15
    )
    assert reply.status_code in (200, 429), reply.text
    return reply.status_code == 200


def cuts(gateway: Gateway, role: str) -> float:
    for line in gateway.metrics().splitlines():
        if line.startswith("vgate_slow_clients_cut_total{") and f'role="{role}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_cut_follower_is_hung_up_on_and_its_slot_freed_long_before_the_send_deadline(
    gateway: Gateway, engine: Stub
) -> None:
    tokens = 30_000  # ~6.7 MB of events; the engine thinks 1 s first, so the follower joins
    body = {"model": STUB_MODEL, "temperature": 0, "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"{RUN} cut follower"}],
            "stub": {"tokens": tokens, "ttft_ms": 1000, "itl_ms": 0.1}}  # fmt: skip
    requests, in_flight = engine.stats()["requests"], engine.stats()["in_flight"]
    received = bytearray()
    leader = threading.Thread(target=lead, args=(gateway, body, received))
    leader.start()
    holds_soon(lambda: engine.stats()["in_flight"] > in_flight)
    started = time.monotonic()
    with silent_follower(gateway, body) as follower:
        leader.join(30)
        assert bytes(received).rstrip().endswith(b"data: [DONE]")
        holds_soon(lambda: was_reset(follower), 10.0, "the cut follower was not hung up on")
        holds_soon(lambda: follower_key_answered(gateway), 10.0, "its slot stayed taken")
        assert time.monotonic() - started < SEND_TIMEOUT_S / 4
    assert engine.stats()["requests"] == requests + 2  # one call for both, then the probe
    assert cuts(gateway, "follower") == 1.0
