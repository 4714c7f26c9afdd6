"""Connection limits (issue #14, acceptance 1): hostile connections neither hold the
gateway's memory nor stay open, and normal traffic flows meanwhile.

Raw sockets play the hostile clients: heads trickled a line a second, 16 MiB heads,
idle connections, unfinished bodies. The gateway runs with short timeouts so that
everything closes within seconds; the production defaults are longer (README).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import Stub
from tests.integration.limits_world import (
    BODY_TIMEOUT_S,
    COMPLETION,
    HEADER_TIMEOUT_S,
    KEEPALIVE_TIMEOUT_S,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    SEND_TIMEOUT_S,
    TICK_S,
    NormalTraffic,
    Served,
    raw_post,
    serve,
)


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(
        stub,
        tmp_path_factory.mktemp("limits"),
        header_timeout_s=HEADER_TIMEOUT_S,
        body_timeout_s=BODY_TIMEOUT_S,
        keepalive_timeout_s=KEEPALIVE_TIMEOUT_S,
        send_timeout_s=SEND_TIMEOUT_S,
        max_body_bytes=MAX_BODY_BYTES,
        max_header_bytes=MAX_HEADER_BYTES,
        max_connections=400,
    ) as served:
        yield served


class Trickler:
    """Connections that send a request head a line a second; notes when each is closed."""

    def __init__(self, served: Served, count: int) -> None:
        self.sockets = [served.connect() for _ in range(count)]
        self.closed: dict[int, float] = {}  # index in sockets: when the gateway closed it
        self._selector = selectors.DefaultSelector()
        for index, sock in enumerate(self.sockets):
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            self._selector.register(sock, selectors.EVENT_READ, index)
        self._next_line = time.monotonic() + 1.0

    def step(self) -> None:
        """Note the connections closed within 0.1 s; send the next line when it is time."""
        for key, _ in self._selector.select(timeout=0.1):
            with contextlib.suppress(OSError):
                if self.sockets[key.data].recv(65536):  # the 408; the close follows
                    continue
            self.closed[key.data] = time.monotonic()
            self._selector.unregister(key.fileobj)
        if time.monotonic() >= self._next_line:
            self._next_line += 1.0
            for index, sock in enumerate(self.sockets):
                if index not in self.closed:
                    with contextlib.suppress(OSError):
                        sock.sendall(b"x-trickle: 1\r\n")

    def close(self) -> None:
        self._selector.close()
        for sock in self.sockets:
            sock.close()


def send_big_head(served: Served, payload: bytes, closed_at: list[float]) -> None:
    """Send a head of ``payload`` bytes; note when the gateway closes the connection."""
    with served.connect() as sock:
        with contextlib.suppress(OSError):  # reset or broken pipe: closed by the gateway
            sock.sendall(payload)
            while sock.recv(65536):
                pass
        closed_at.append(time.monotonic())


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """Everything the gateway sends until it closes the connection (fails after ``timeout``)."""
    sock.settimeout(timeout)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and a body of its content-length)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed before the body's end: {received!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def error_of(response: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(response.partition(b"\r\n\r\n")[2])["error"]
    return error


def test_hostile_heads_are_closed_without_holding_memory_while_traffic_flows(
    gateway: Served,
) -> None:
    big_head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (16 << 20)
    traffic = NormalTraffic(gateway.url)
    with traffic.running():
        traffic.wait_for(10)  # warm: what normal traffic costs is in the baseline
        baseline = gateway.rss_bytes()
        started = time.monotonic()
        trickler = Trickler(gateway, 150)
        big_closed: list[float] = []
        senders = [
            threading.Thread(target=send_big_head, args=(gateway, big_head, big_closed))
            for _ in range(10)
        ]
        for sender in senders:
            sender.start()

        peak = baseline
        with contextlib.closing(trickler):
            while len(trickler.closed) < 150 and time.monotonic() < started + 30:
                trickler.step()
                peak = max(peak, gateway.rss_bytes())
        for sender in senders:
            sender.join(timeout=30)
        ended = time.monotonic()
        traffic.wait_for(5, sent_after=ended)  # and after the attack

    assert len(trickler.closed) == 150, f"{150 - len(trickler.closed)} trickling ones still open"
    assert len(big_closed) == 10, "a 16 MiB head was not refused"
    trickle_times = [at - started for at in trickler.closed.values()]
    assert min(trickle_times) >= HEADER_TIMEOUT_S - 0.2, "closed before the header timeout"
    assert max(trickle_times) <= HEADER_TIMEOUT_S + TICK_S + 3.0, "closed late"
    assert max(at - started for at in big_closed) < 10.0
    assert peak - baseline < 50 * 1024 * 1024, f"RSS grew {(peak - baseline) >> 20} MiB"

    during = [(at, status) for at, status in traffic.results if at >= started]
    assert all(status == 200 for _, status in traffic.results), traffic.results
    assert len(during) >= 20
    sent = [started] + [at for at, _ in during] + [ended]
    assert max(b - a for a, b in itertools.pairwise(sent)) < 2.0, "normal traffic stalled"


def test_a_head_over_the_limit_is_431_and_one_under_it_is_served(gateway: Served) -> None:
    start = b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: "
    with gateway.connect() as sock:  # one byte over: nothing is left unread when it closes
        sock.sendall(start + b"a" * (MAX_HEADER_BYTES + 1 - len(start)))
        response = read_until_closed(sock, timeout=10)
    assert response.startswith(b"HTTP/1.1 431 "), response[:200]
    assert error_of(response)["code"] == "request_head_too_large"

    big_but_fine = {"x-big": "a" * (MAX_HEADER_BYTES - 1024)}
    assert httpx.get(f"{gateway.url}/health", headers=big_but_fine).status_code == 200


def test_a_slow_head_is_408_and_a_silent_connection_is_closed(gateway: Served) -> None:
    with gateway.connect() as silent, gateway.connect() as slow:
        started = time.monotonic()
        slow.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        response = read_until_closed(slow, timeout=HEADER_TIMEOUT_S + 5)
        assert read_until_closed(silent, timeout=HEADER_TIMEOUT_S + 5) == b""
        waited = time.monotonic() - started
    assert response.startswith(b"HTTP/1.1 408 "), response[:200]
    assert error_of(response)["code"] == "request_timeout"
    assert HEADER_TIMEOUT_S - 0.2 <= waited <= HEADER_TIMEOUT_S + TICK_S + 2.0


def test_an_unfinished_body_is_closed_after_the_body_timeout(gateway: Served) -> None:
    with gateway.connect() as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 100\r\n\r\n" + b'{"model": '
        )
        started = time.monotonic()
        assert read_until_closed(sock, timeout=BODY_TIMEOUT_S + 5) == b""
        waited = time.monotonic() - started
    assert BODY_TIMEOUT_S - 0.2 <= waited <= BODY_TIMEOUT_S + TICK_S + 2.0


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(gateway: Served) -> None:
    with gateway.connect() as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        answered = time.monotonic()
        response = read_until_closed(sock, timeout=KEEPALIVE_TIMEOUT_S + 5)
        waited = time.monotonic() - answered
    assert response.startswith(b"HTTP/1.1 200 ")
    assert KEEPALIVE_TIMEOUT_S - 0.5 <= waited <= KEEPALIVE_TIMEOUT_S + 2.0


def test_a_chunked_body_over_the_limit_is_refused_before_it_ends(gateway: Served) -> None:
    chunk = b"x" * 16384
    with gateway.connect() as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):  # twice the limit, and no last chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert error_of(response)["code"] == "request_too_large"


HEALTH = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"


def open_served(served: Served) -> socket.socket:
    """A connection that was served (/health answered) and stays open. Retried on a 503:
    the readiness check's connection may not have been closed on the gateway's side yet."""
    deadline = time.monotonic() + 10
    while True:
        sock = served.connect()
        sock.sendall(HEALTH)
        response = read_response(sock)
        if response.startswith(b"HTTP/1.1 200 "):
            return sock
        sock.close()
        assert response.startswith(b"HTTP/1.1 503 ") and time.monotonic() < deadline


def test_a_connection_beyond_the_cap_is_503_and_open_ones_are_served(
    stub: Stub, tmp_path: Path
) -> None:
    with serve(stub, tmp_path, max_connections=3) as served:
        held = [open_served(served) for _ in range(3)]
        with served.connect() as extra:
            extra.sendall(HEALTH)
            response = read_until_closed(extra, timeout=10)
        assert response.startswith(b"HTTP/1.1 503 "), response[:200]
        assert b"\r\nconnection: close\r\n" in response.lower()
        assert error_of(response)["code"] == "too_many_connections"
        held[0].sendall(HEALTH)
        assert read_response(held[0]).startswith(b"HTTP/1.1 200 ")

        held.pop().close()  # room for one more
        open_served(served).close()
        for sock in held:
            sock.close()


@pytest.mark.parametrize(
    "upgrade",
    [
        (
            b"connection: Upgrade, HTTP2-Settings",
            b"upgrade: h2c",
            b"http2-settings: AAMAAABkAAQCAAAAAAIAAAAA",
        ),
        (b"Connection: upgrade", b"Upgrade: websocket"),
        (b"CONNECTION: UPGRADE", b"UPGRADE: h2c"),
    ],
    ids=["curl-http2", "websocket", "upper-case"],
)
def test_an_upgrade_the_gateway_does_not_serve_is_ignored_and_the_body_read(
    gateway: Served, upgrade: tuple[bytes, ...]
) -> None:
    """``curl --http2`` on an http:// URL asks for h2c with its POST: served as HTTP/1.1,
    body and all (llhttp skipped the body: 400 "not valid JSON")."""
    with gateway.connect() as sock:
        sock.sendall(raw_post(orjson.dumps(COMPLETION), *upgrade))
        response = read_response(sock)
        assert response.startswith(b"HTTP/1.1 200 "), response[:300]
        assert orjson.loads(response.partition(b"\r\n\r\n")[2])["object"] == "chat.completion"
        sock.sendall(raw_post(orjson.dumps(COMPLETION)))  # the connection serves on
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")


def test_an_upgrade_the_check_misses_is_a_400_never_an_empty_body(gateway: Served) -> None:
    """Spelt so that neither ``pgrade`` nor ``PGRADE`` occurs: llhttp still sees an
    upgrade, and the client gets a clear 400 instead of its body dropped."""
    with gateway.connect() as sock:
        sock.sendall(raw_post(orjson.dumps(COMPLETION), b"Connection: UpGrade", b"UpGrade: h2c"))
        response = read_until_closed(sock, timeout=10)
    assert response.startswith(b"HTTP/1.1 400 "), response[:300]
    assert error_of(response)["code"] == "invalid_http_request"


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
    ids=["two-lengths", "space-in-name", "http2-preface"],
)
def test_bytes_that_are_not_http_get_a_400_in_openai_shape(gateway: Served, head: bytes) -> None:
    with gateway.connect() as sock:
        sock.sendall(head)
        response = read_until_closed(sock, timeout=10)
    assert response.startswith(b"HTTP/1.1 400 "), response[:300]
    assert b"content-type: application/json" in response.lower()
    assert error_of(response)["type"] == "invalid_request_error"
    assert httpx.get(f"{gateway.url}/health").status_code == 200


def send_endless_trailer(served: Served, head: bytes) -> tuple[int, bytes]:
    """A chunked request with one small chunk, then a trailer whose value never ends, sent
    64 KiB at a time until the gateway closes the connection (or 32 MiB have gone): the
    bytes that went, and what the gateway answered."""
    piece = b"v" * 65536
    sent = 0
    with served.connect() as sock:
        sock.sendall(head + b"2\r\n{}\r\n0\r\nx-trailer: ")
        with contextlib.suppress(OSError):  # reset or broken pipe: closed by the gateway
            while sent < 32 * 1024 * 1024:
                sock.sendall(piece)
                sent += len(piece)
        return sent, read_until_closed(sock, timeout=10)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /health HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\n",
    ],
    ids=["answered-before-the-body", "waiting-for-the-body"],
)
def test_an_endless_trailer_is_cut_at_the_head_limit(gateway: Served, head: bytes) -> None:
    """Trailers count against max_header_bytes: without a key, a trailer whose value never
    ends made httptools hold (and copy on every read) all of it until the body deadline:
    +282 MiB of RSS for one connection (bug hunt). The gateway now closes the connection
    once the limit has gone in without the parser producing anything (the socket buffers
    on both sides let a few MiB more go before the client sees it)."""
    before = gateway.rss_bytes()
    sent, answer = send_endless_trailer(gateway, head)
    assert sent < 16 * 1024 * 1024, sent
    if head.startswith(b"POST /v1/"):  # the application has not answered: it gets a 431
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert error_of(answer)["code"] == "request_head_too_large"
    assert gateway.rss_bytes() - before < 16 * 1024 * 1024
    assert httpx.get(f"{gateway.url}/health").status_code == 200


def test_a_chunked_body_with_small_trailers_is_served(gateway: Served) -> None:
    """One-byte chunks and an ordinary trailer still make a request (the limit counts only
    bytes that produce nothing)."""
    body = orjson.dumps(COMPLETION)
    chunks = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    with gateway.connect() as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\nx-checksum: abc\r\n\r\n"
        )
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200 "), response[:300]
    assert orjson.loads(response.partition(b"\r\n\r\n")[2])["object"] == "chat.completion"


def _answers(conn: socket.socket) -> list[bytes]:
    """The status of every answer read until the gateway closes ``conn``."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := conn.recv(1 << 16):
            received += chunk
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", received)


def test_a_few_pipelined_requests_are_answered_in_order(gateway: Served) -> None:
    health = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"
    last = b"GET /v1/nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    with gateway.connect() as conn:
        conn.sendall(health * 5 + last)
        answers = _answers(conn)
    assert answers == [b"200"] * 5 + [b"404"]


def test_a_flood_of_pipelined_requests_closes_the_connection_without_growing(
    gateway: Served,
) -> None:
    """One connection writing ``GET /health`` without reading: uvicorn queued every
    request of each read (a worker grew by 1.7 GiB in 12 s, /health took seconds)."""
    flood = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n" * 8000  # ~250 KB, one write
    before = gateway.rss_bytes()
    closed_after: list[int] = []
    for _ in range(20):
        with gateway.connect() as conn:
            with contextlib.suppress(OSError):
                conn.sendall(flood * 4)
            closed_after.append(len(_answers(conn)))
    assert max(closed_after) <= 65  # the one answered and at most MAX_PIPELINED behind it
    assert gateway.rss_bytes() - before < 20 * 1024 * 1024
    assert httpx.get(f"{gateway.url}/health", timeout=5).status_code == 200
