"""The send deadline (``server.send_timeout_s``): a client that stops reading its
answer is disconnected, its engine stream cancelled, while normal traffic flows."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.conftest import Stub
from tests.integration.limits_world import (
    COMPLETION,
    SEND_TIMEOUT_S,
    NormalTraffic,
    Served,
    raw_post,
    serve,
)


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(stub, tmp_path_factory.mktemp("send"), send_timeout_s=SEND_TIMEOUT_S) as served:
        yield served


def endless_stream(served: Served, kind: str) -> socket.socket:
    """A connection that asks for a long answer and then reads none of it (its receive
    buffer as small as the kernel allows, so the gateway's fills at once)."""
    body: dict[str, Any] = {**COMPLETION, "max_tokens": 3_000_000}
    if kind == "stream":  # ~200 bytes an event
        body.update(stream=True, stub={"tokens": 200_000, "itl_ms": 0.05})
    else:  # ~18 MB in one answer: more than the kernel's buffers take
        body.update(stub={"tokens": 3_000_000})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", served.port))
    sock.sendall(raw_post(orjson.dumps(body)))
    return sock


def established(sock: socket.socket) -> bool:
    """Whether the kernel still has ``sock``'s connection established (``/proc/net/tcp``):
    the gateway aborting it resets it, with no byte read on this side."""
    local = f"{sock.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(":" + local) and fields[3] == "01":
            return True
    return False


@pytest.mark.parametrize("kind", ["stream", "whole"])
def test_a_client_that_stops_reading_is_disconnected_and_its_stream_ended(
    gateway: Served, stub: Stub, kind: str
) -> None:
    """A client that never reads its answer: the connection is aborted after the send
    deadline (a stream's engine request cancelled), while normal traffic flows. Without
    the deadline the stream, its engine connection and the buffered answer stayed as
    long as the client kept the socket open."""
    cancelled = stub.stats()["streams_cancelled"]
    traffic = NormalTraffic(gateway.url)
    with traffic.running(), endless_stream(gateway, kind) as sock:
        deadline = time.monotonic() + 30
        while established(sock):
            assert time.monotonic() < deadline, "the gateway still holds the connection"
            time.sleep(0.1)
        if kind == "stream":
            while stub.stats()["streams_cancelled"] == cancelled:
                assert time.monotonic() < deadline, "the engine stream was never cancelled"
                time.sleep(0.1)
        traffic.wait_for(3)
    assert all(status == 200 for _, status in traffic.results), traffic.results
