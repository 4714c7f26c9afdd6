"""A single-flight leader whose client reads slowly, or not at all, does not pace the
requests that follow it: the engine is read at its own pace, each client takes the
answer at its own, and a client that falls more than ``cache.max_lag_bytes`` behind
is cut with an error event while the others go on.

The leader here is a raw socket with a receive buffer as small as the kernel allows
(HTTP/1.0: its answer is the bare events, ended by the close), which reads nothing
until its followers are done."""

from __future__ import annotations

import socket
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
        "cache": {"enabled": True, "namespace": RUN, "max_lag_bytes": MAX_LAG},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("slow-leader"))


def body_of(name: str, tokens: int, itl_ms: float = 0.0) -> dict[str, Any]:
    """A stream request; the engine thinks 1 s first, so that an identical request sent
    once this one is at the engine joins its flight (a flight past ``max_entry_bytes``
    takes no one)."""
    return {"model": STUB_MODEL, "temperature": 0, "stream": True, "max_tokens": tokens,
            "messages": [{"role": "user", "content": f"{RUN} {name}"}],
            "stub": {"tokens": tokens, "ttft_ms": 1000, "itl_ms": itl_ms}}  # fmt: skip


def silent_leader(gateway: Gateway, engine: Stub, body: dict[str, Any]) -> socket.socket:
    """A client that asks for ``body`` and reads nothing; returned once its request is
    at the engine (it leads the flight)."""
    in_flight = engine.stats()["in_flight"]
    payload = orjson.dumps(body)
    head = b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n" % len(payload)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", int(gateway.url.rsplit(":", 1)[1])))
    sock.sendall(head + payload)
    holds_soon(lambda: engine.stats()["in_flight"] > in_flight)
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the gateway sends on ``sock`` until it closes it."""
    parts = []
    while chunk := sock.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


def read_until_reset(sock: socket.socket) -> tuple[bytes, bool]:
    """What arrives on ``sock`` until it ends, and whether it ended with a reset."""
    parts = []
    try:
        while chunk := sock.recv(65536):
            parts.append(chunk)
    except ConnectionResetError:
        return b"".join(parts), True
    return b"".join(parts), False


def text_of(events: bytes) -> str:
    """The content of a chat stream's events (its ``[DONE]`` checked)."""
    assert events.rstrip().endswith(b"data: [DONE]"), events[-300:]
    text = []
    for event in events.split(b"\n\n"):
        if event.startswith(b"data: {"):
            chunk = orjson.loads(event[6:])
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "")
    return "".join(text)


def follow(gateway: Gateway, body: dict[str, Any], stop_after: int | None = None) -> bytes:
    """An identical request's stream, read as fast as it comes (or left after
    ``stop_after`` bytes); each read waits at most 15 s."""
    received = bytearray()
    with (
        httpx.Client(timeout=15) as client,
        client.stream("POST", f"{gateway.base_url}/chat/completions", json=body) as reply,
    ):
        assert reply.status_code == 200
        for chunk in reply.iter_bytes():
            received += chunk
            if stop_after is not None and len(received) >= stop_after:
                break
    return bytes(received)


def test_a_leader_that_reads_nothing_does_not_pace_its_follower(
    gateway: Gateway, engine: Stub
) -> None:
    """~6.7 MB of events at a pace a client can keep up with (a follower at the engine's
    full speed would itself fall ``max_lag_bytes`` behind): the follower gets all of them
    while the leader has read nothing (before: the follower got what the leader's socket
    buffers took, then nothing until the send deadline reset the leader, then an
    error). The leader, more than ``max_lag_bytes`` behind while taking no bytes, is
    cut and its connection reset at once (``test_cache_cut_leader``): when it reads
    again it finds at most what was already on its way, never the rest."""
    body = body_of("silent", 30_000, itl_ms=0.1)
    requests = engine.stats()["requests"]
    with silent_leader(gateway, engine, body) as leader:
        started = time.monotonic()
        followed = follow(gateway, body)
        assert time.monotonic() - started < 30
        assert len(text_of(followed)) > 0 and len(followed) > 6 * MAX_LAG
        got, reset = read_until_reset(leader)
    assert engine.stats()["requests"] == requests + 1  # one engine call for both
    assert reset or b'"code":"client_too_slow"' in got  # hung up on, or told why
    assert b'"finish_reason":"length"' not in got  # it was cut, not sent the rest


def test_a_leader_that_reads_again_in_time_gets_its_whole_answer(
    gateway: Gateway, engine: Stub
) -> None:
    """Less than ``max_lag_bytes`` ahead of a leader that reads nothing until its
    follower is done: the leader then gets the whole answer, the same as the follower's."""
    body = body_of("late reader", 1500)
    with silent_leader(gateway, engine, body) as leader:
        followed = follow(gateway, body)
        got = read_to_end(leader)
    assert text_of(got.split(b"\r\n\r\n", 1)[1]) == text_of(followed)
    assert followed.count(b"data: ") > 1500  # a long answer, every event of it


def test_followers_finish_after_the_leaders_client_leaves(gateway: Gateway, engine: Stub) -> None:
    """The leader's client leaves while the engine is read for a follower: the follower
    still gets its whole answer (before: an error event), from the one engine call."""
    body = body_of("leaves", 400, itl_ms=5)
    requests = engine.stats()["requests"]
    with (
        httpx.Client(timeout=15) as client,
        silent_leader(gateway, engine, body) as leader,
        client.stream("POST", f"{gateway.base_url}/chat/completions", json=body) as reply,
    ):
        chunks = reply.iter_bytes()
        received = bytearray()
        while received.count(b"\n\ndata: ") < 10:  # the follower is being served
            received += next(chunks)
        leader.close()
        for chunk in chunks:
            received += chunk
    assert len(text_of(bytes(received))) > 0
    assert received.count(b'"finish_reason":"length"') == 1  # the whole answer
    assert engine.stats()["requests"] == requests + 1


def test_the_engine_stream_is_cancelled_once_nobody_reads_it(
    gateway: Gateway, engine: Stub
) -> None:
    """The leader's client leaves, then its only follower: the engine request ends."""
    body = body_of("nobody", 5000, itl_ms=2)
    cancelled = engine.stats()["streams_cancelled"]
    with (
        silent_leader(gateway, engine, body) as leader,
        httpx.Client(timeout=15) as client,
        client.stream("POST", f"{gateway.base_url}/chat/completions", json=body) as reply,
    ):
        chunks = reply.iter_bytes()
        received = bytearray()
        while received.count(b"\n\ndata: ") < 10:
            received += next(chunks)
        leader.close()
        received += next(chunks)  # still served after the leader left
    # (the follower's connection closed here)
    holds_soon(lambda: engine.stats()["streams_cancelled"] > cancelled)
    holds_soon(lambda: engine.stats()["in_flight"] == 0)
