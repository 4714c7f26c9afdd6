"""LimitedHttpToolsProtocol: head size, head and body deadlines, connection cap.

The protocol runs over a fake transport. Its clock and timers are moved by hand
(:class:`ManualClock`); the application's tasks run on the test's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.http.connection_limits import OverCapLog
from gateway.http.connections import ConnectionLimits, LimitedHttpToolsProtocol
from gateway.http.pipelining import MAX_PIPELINED

LIMITS = ConnectionLimits(
    max_header_bytes=4096,
    header_timeout_s=5.0,
    body_timeout_s=5.0,
    send_timeout_s=5.0,
    max_connections=3,
)


class Timer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """The protocol's loop: tasks go to the running loop, time moves by :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro, **kwargs)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while due := sorted(
            (t for t in self.timers if t.when <= end and not t.cancelled), key=lambda t: t.when
        ):
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer.when
            timer.callback()
        self.now = end


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False
        self.reading = True
        self.reading_at_writes: list[bool] = []
        self.protocol: LimitedHttpToolsProtocol | None = None

    def write(self, data: bytes) -> None:
        self.written += data
        self.reading_at_writes.append(self.reading)

    def close(self) -> None:
        if not self.closed and self.protocol is not None:
            self.closed = True
            self.protocol.connection_lost(None)
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name)


class App:
    """Reads the whole body, answers 200 with its length; remembers each request's path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.paths.append(scope["path"])
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message["body"]
            if not message["more_body"]:
                break
        self.bodies.append(body)
        answer = b"%d" % len(body)
        headers = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


class Connection:
    """One protocol instance over a fake transport, with its app, clock and server state."""

    def __init__(self, state: ServerState | None = None, keep_alive_s: int = 100) -> None:
        self.app = App()
        self.clock = ManualClock()
        self.transport = FakeTransport()
        config = Config(
            self.app,
            lifespan="off",
            log_config=None,
            proxy_headers=False,
            timeout_keep_alive=keep_alive_s,
        )
        self.protocol = LimitedHttpToolsProtocol(
            config,
            state or ServerState(),
            {},
            cast(asyncio.AbstractEventLoop, self.clock),
            limits=LIMITS,
        )
        self.transport.protocol = self.protocol
        self.protocol.connection_made(cast(asyncio.Transport, self.transport))

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def settle(self) -> None:
        """Let the application's tasks run until they wait for something."""
        for _ in range(20):
            await asyncio.sleep(0)


def get(path: str, padding: int = 0) -> bytes:
    return b"GET %s HTTP/1.1\r\nhost: x\r\nx-pad: %s\r\n\r\n" % (path.encode(), b"p" * padding)


def error_code(written: bytes) -> str:
    code: str = orjson.loads(written.partition(b"\r\n\r\n")[2])["error"]["code"]
    return code


async def test_a_head_past_the_limit_is_431_and_never_reaches_the_app() -> None:
    conn = Connection()
    conn.send(b"GET / HTTP/1.1\r\nhost: x\r\n")
    while not conn.transport.closed:  # a header of 1 KiB at a time
        conn.send(b"x-filler: " + b"f" * 1000 + b"\r\n")
    await conn.settle()
    assert conn.transport.written.startswith(b"HTTP/1.1 431 ")
    assert error_code(conn.transport.written) == "request_head_too_large"
    assert conn.transport.closed and conn.app.paths == []


async def test_a_head_of_exactly_the_limit_is_served() -> None:
    request = get("/", padding=0)
    conn = Connection()
    conn.send(get("/", padding=LIMITS.max_header_bytes - len(request)))
    await conn.settle()
    assert conn.app.paths == ["/"] and conn.transport.written.startswith(b"HTTP/1.1 200 ")


async def test_a_body_read_with_its_head_does_not_count_as_head() -> None:
    body = b"b" * (10 * LIMITS.max_header_bytes)
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    await conn.settle()
    assert conn.app.bodies == [body]


async def test_pipelined_requests_in_one_read_are_each_measured_on_their_own() -> None:
    requests = [get(f"/{n}", padding=1000) for n in range(40)]  # 40 KiB, 1 KiB each
    conn = Connection()
    conn.send(b"".join(requests))
    for _ in range(40):
        await conn.settle()
    assert conn.app.paths == [f"/{n}" for n in range(40)]
    assert conn.transport.written.count(b"HTTP/1.1 200 ") == 40


@pytest.mark.parametrize("split", [0, 1, 2, 3])
async def test_a_body_is_never_rewritten_when_its_heads_end_straddles_two_reads(
    split: int,
) -> None:
    """The head's blank line split between reads, and a body holding ``\r\nupgrade:``
    lines: the Upgrade rewrite took body bytes for head and lengthened them, so the
    body's tail was read as a second, smuggled request (hostile-client hunt)."""
    body = b"{" + b"\r\nupgrade: z" * 10 + b"\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    head = b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    cut = len(head) - split  # 0: the blank line whole in the first read
    conn = Connection()
    conn.send(head[:cut])
    conn.send(head[cut:] + body)
    await conn.settle()
    assert conn.app.paths == ["/p"] and conn.app.bodies == [body]


def _smuggling_body() -> tuple[bytes, bytes]:
    """A POST whose body holds ``\r\nupgrade:`` lines, then a whole request: if the
    Upgrade rewrite lengthened those lines, that request would run."""
    body = b"{" + b"\r\nupgrade: z" * 6 + b"\r\n\r\n" + get("/smuggled")
    head = b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    return head, body


@pytest.mark.parametrize("split", [1, 2, 3])
async def test_a_pipelined_heads_end_straddling_reads_never_rewrites_its_body(split: int) -> None:
    """The head begun in the read that ended the previous request (review)."""
    head, body = _smuggling_body()
    conn = Connection()
    conn.send(get("/first") + head[:-split])
    await conn.settle()
    conn.send(head[-split:] + body)
    await conn.settle()
    assert conn.app.paths == ["/first", "/p"] and conn.app.bodies[-1] == body


async def test_a_heads_blank_line_over_three_reads_never_rewrites_its_body() -> None:
    head, body = _smuggling_body()
    conn = Connection()
    for part in (head[:-2], head[-2:-1], head[-1:] + body):  # ...\r\n | \r | \n{...
        conn.send(part)
    await conn.settle()
    assert conn.app.paths == ["/p"] and conn.app.bodies == [body]


async def test_the_request_being_answered_learns_of_a_close_for_too_many_pipelined() -> None:
    """uvicorn told only the newest (queued) request: the one running went on to its
    end, its engine, slot and tokens held, though nobody could get its answer."""
    conn = Connection()
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await receive()  # its (empty) body
            seen.append((await receive())["type"])  # then waits: the disconnect

    conn.protocol.app = app
    conn.send(get("/slow"))
    await conn.settle()
    conn.send(b"".join(get(f"/{n}") for n in range(MAX_PIPELINED + 2)))
    assert conn.transport.closed
    await conn.settle()
    assert seen == ["http.disconnect"]


async def test_more_pipelined_requests_than_the_cap_close_the_connection() -> None:
    """uvicorn queued every request of a read: 8,000 ``GET /health`` in 250 KB."""
    conn = Connection()
    conn.send(b"".join(get(f"/{n}") for n in range(MAX_PIPELINED + 10)))
    assert conn.transport.closed
    await conn.settle()
    assert len(conn.app.paths) <= MAX_PIPELINED + 1


async def test_no_read_while_pipelined_requests_wait() -> None:
    conn = Connection()
    conn.send(get("/0") + get("/1") + get("/2"))
    assert not conn.transport.reading  # uvicorn paused: two wait behind /0
    await conn.settle()
    assert conn.app.paths == ["/0", "/1", "/2"]
    assert conn.transport.written.count(b"HTTP/1.1 200 ") == 3
    # /1 was answered while /2 still waited: not reading (uvicorn read again after /0)
    assert conn.transport.reading_at_writes == [False, False, True]
    assert conn.transport.reading  # none waits now: the connection reads again


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    conn = Connection()
    conn.clock.advance(LIMITS.header_timeout_s - 0.5)
    assert not conn.transport.closed
    conn.clock.advance(1.0)
    assert conn.transport.closed and conn.transport.written == b""


async def test_a_head_that_is_not_complete_in_time_is_408() -> None:
    conn = Connection()
    conn.send(b"GET / HTTP/1.1\r\n")
    conn.clock.advance(LIMITS.header_timeout_s + 2.0)
    assert conn.transport.written.startswith(b"HTTP/1.1 408 ")
    assert error_code(conn.transport.written) == "request_timeout"
    assert conn.transport.closed


async def test_a_body_that_is_not_complete_in_time_closes_the_connection() -> None:
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
    await conn.settle()
    conn.clock.advance(LIMITS.body_timeout_s + 2.0)
    await conn.settle()
    assert conn.transport.closed and conn.transport.written == b""
    assert conn.app.bodies == []  # the app saw a disconnect, never a truncated body


async def test_time_the_gateway_is_not_reading_is_not_held_against_the_body() -> None:
    conn = Connection()
    conn.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n01234")
    conn.protocol.flow.pause_reading()  # what uvicorn does with 64 KiB unread
    conn.clock.advance(3 * LIMITS.body_timeout_s)
    assert not conn.transport.closed
    conn.protocol.flow.resume_reading()
    conn.send(b"56789")
    await conn.settle()
    assert conn.app.bodies == [b"0123456789"]


async def test_between_requests_the_keep_alive_timeout_applies_not_the_header_timeout() -> None:
    conn = Connection(keep_alive_s=100)
    conn.send(get("/first"))
    await conn.settle()
    conn.clock.advance(50)
    assert not conn.transport.closed
    conn.send(b"GET /second HTTP/1.1\r\n")  # and from its first byte, the header timeout
    conn.clock.advance(LIMITS.header_timeout_s + 2.0)
    assert conn.transport.written.count(b"HTTP/1.1 408 ") == 1 and conn.transport.closed


async def test_a_connection_beyond_the_cap_gets_503_and_those_before_it_are_served() -> None:
    state = ServerState()
    conns = [Connection(state) for _ in range(LIMITS.max_connections + 1)]
    for conn in conns:
        conn.send(get("/"))
    await conns[0].settle()
    *served, beyond = conns
    assert all(c.transport.written.startswith(b"HTTP/1.1 200 ") for c in served)
    assert beyond.transport.written.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nconnection: close\r\n" in beyond.transport.written
    assert error_code(beyond.transport.written) == "too_many_connections"
    assert beyond.transport.closed and beyond.app.paths == []


async def served_connection() -> Connection:
    """A connection whose one request was answered: no head or body deadline runs."""
    conn = Connection()
    conn.send(get("/"))
    await conn.settle()
    assert conn.transport.written.startswith(b"HTTP/1.1 200 ")
    return conn


async def test_a_client_that_takes_no_bytes_is_reset_after_the_send_timeout() -> None:
    conn = await served_connection()
    conn.protocol.pause_writing()  # the transport's buffer is full
    conn.clock.advance(LIMITS.send_timeout_s - 1)
    assert not conn.transport.closed
    conn.clock.advance(3)  # the timeout, and the tick that sees it
    assert conn.transport.aborted


async def test_a_slow_client_that_takes_bytes_now_and_then_is_not_reset() -> None:
    conn = await served_connection()
    for _ in range(int(LIMITS.send_timeout_s) * 4):
        conn.protocol.pause_writing()
        conn.clock.advance(LIMITS.send_timeout_s / 2)
        conn.protocol.resume_writing()  # it took some: the deadline starts again
    conn.protocol.pause_writing()
    conn.clock.advance(LIMITS.send_timeout_s - 1)
    assert not conn.transport.closed
    conn.protocol.resume_writing()
    conn.clock.advance(LIMITS.send_timeout_s * 3)  # writing, not paused: no deadline
    assert not conn.transport.closed


def test_the_over_cap_warning_is_logged_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client keeping the worker at its connection cap crossed it at every new
    connection: one warning each time (a log flood); now the first, then one a minute."""
    caplog.set_level(logging.WARNING, "vgate.connections")
    over = OverCapLog()
    for second in range(60):
        over.crossed(1000.0 + second)
    over.crossed(1061.0)
    lines = [r.getMessage() for r in caplog.records if r.name == "vgate.connections"]
    assert lines == [
        "over server.max_connections: new connections get 503",
        "over server.max_connections: new connections get 503 (59 more crossings since)",
    ]
