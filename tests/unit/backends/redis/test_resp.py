"""The lean Redis client: RESP parsing piece by piece, pipelining, errors and reconnection,
against a real redis-server."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.backends.redis.resp import RespClient
from gateway.backends.redis.resp_wire import Incomplete, RedisReplyError, parse_reply
from gateway.errors import StoreUnavailable
from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b":42\r\n", 42),
        (b"$5\r\nhello\r\n", b"hello"),
        (b"$-1\r\n", None),
        (b"+OK\r\n", b"OK"),
        (b"*3\r\n:1\r\n$1\r\nx\r\n*1\r\n:-7\r\n", [1, b"x", [-7]]),
        (b"*0\r\n", []),
    ],
)
def test_replies_parse_whole_and_not_before(raw: bytes, value: object) -> None:
    assert parse_reply(raw, 0) == (value, len(raw))
    for cut in range(1, len(raw)):
        with pytest.raises(Incomplete):
            parse_reply(raw[:cut], 0)


def test_error_replies_become_exceptions() -> None:
    error, end = parse_reply(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(error, RedisReplyError) and str(error).startswith("NOSCRIPT")
    assert end == 30


async def test_pipelined_calls_get_their_own_replies(redis_url: str) -> None:
    client = RespClient(redis_url, timeout_s=1.0)
    await client.call("SET", "resp:a", "1")
    replies = await asyncio.gather(*(client.call("INCR", "resp:a") for _ in range(200)))
    assert sorted(replies) == list(range(2, 202))
    with pytest.raises(RedisReplyError):
        await client.call("INCR", "resp:a", "extra")
    assert await client.call("GET", "resp:a") == b"201"  # the error broke nothing
    await client.close()


async def test_unreachable_redis_raises_store_unavailable_then_recovers() -> None:
    port = free_port()
    client = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailable):
        await client.call("PING")
    with run_redis(port):
        assert await client.call("PING") == b"PONG"
    with pytest.raises(StoreUnavailable):  # the server went away: the next call says so
        await client.call("PING")
    await client.close()


async def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(client.call("PING"), 3.0)
        await client.close()


class CountingTransport:
    """A transport that records each write before passing it on."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._inner.write(data)

    def close(self) -> None:
        self._inner.close()


async def counted(client: RespClient) -> CountingTransport:
    """The client's connection, up, with its writes recorded from now on."""
    assert await client.call("PING") == b"PONG"
    connection = client._connection
    assert connection is not None and connection.transport is not None
    counting = CountingTransport(connection.transport)
    connection.transport = counting  # type: ignore[assignment]
    return counting


async def test_the_commands_of_one_turn_leave_in_one_write_in_order(redis_url: str) -> None:
    client = RespClient(redis_url, timeout_s=1.0)
    transport = await counted(client)
    batched: list[asyncio.Future[object]] = []
    # A batching caller's command, added just before the write; then two plain ones.
    client.before_flush(lambda: batched.append(client.send_nowait("INCR", "cork:n")))
    stored = client.send_nowait("SET", "cork:n", "41")
    read = client.send_nowait("GET", "cork:n")
    assert transport.writes == []  # nothing leaves before the turn ends
    assert await stored == b"OK" and await read == b"41"
    assert await batched[0] == 42  # made last, sent last: it ran after the SET
    assert len(transport.writes) == 1
    assert transport.writes[0].count(b"*") == 3
    await client.close()


async def test_what_a_turn_queued_still_leaves_when_the_client_closes(redis_url: str) -> None:
    client = RespClient(redis_url, timeout_s=1.0)
    await counted(client)
    client.send_nowait("SET", "cork:last", "settled")
    await client.close()  # in the same turn: a last settlement at shutdown
    reader = RespClient(redis_url, timeout_s=1.0)
    deadline = asyncio.get_running_loop().time() + 10.0  # read shortly after the close
    while asyncio.get_running_loop().time() < deadline:
        if await reader.call("GET", "cork:last") == b"settled":
            break
        await asyncio.sleep(0.01)
    assert await reader.call("GET", "cork:last") == b"settled"
    await reader.close()


async def test_a_batch_added_while_a_write_is_made_leaves_with_the_next(redis_url: str) -> None:
    client = RespClient(redis_url, timeout_s=1.0)
    transport = await counted(client)
    late: list[asyncio.Future[object]] = []

    def batch() -> None:  # a batching caller whose work queues another batch
        client.before_flush(lambda: late.append(client.send_nowait("PING")))

    client.before_flush(batch)
    first = client.send_nowait("ECHO", "first")
    assert await first == b"first"
    for _ in range(10):  # a few turns: the late batch must not wait for another command
        if late:
            break
        await asyncio.sleep(0)
    assert late and await late[0] == b"PONG"
    assert len(transport.writes) == 2
    await client.close()
