"""Redis calls with deadlines, against a fake Redis that misbehaves on purpose.

The fake is an asyncio server on loopback that reads real RESP commands and
answers each as the test says: a well-framed reply of the wrong type, one reply
too many, an error, garbage, or nothing at all. Whatever it does, a call fails
with :class:`StoreUnavailable` within its deadline (never hangs), the client
drops that connection, and the next call, on a fresh connection, gets its own
answer. The redis-py clients (key store, engine registry) are held to the same
deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.exceptions import RedisError

from engines.registry import RedisRegistry
from gateway.backends.redis.cache import RedisEntryStore
from gateway.backends.redis.keys import RedisKeyStore
from gateway.backends.redis.limiter import RedisLimiter
from gateway.backends.redis.link import RedisLink, redis_py_client
from gateway.backends.redis.resp import RespClient
from gateway.backends.redis.resp_wire import BULK, STATUS, Incomplete, RedisReplyError, parse_reply
from gateway.errors import StoreUnavailable
from gateway.ratelimit.limits import Decision, Limits, LimitScope

Answer = Callable[[list[bytes], int], bytes | None]
"""What the fake sends for one command (its arguments, the connection's number, from
0): the raw bytes, or None to send nothing."""

SLACK_S = 0.5
"""Scheduling allowance on a busy 2-core machine: far below any hang, far above a
loop turn."""
SCOPES = (LimitScope("faults", Limits(rpm=10)),)
ADMITTED = b"1 0 0 0 7 1 0 60000"  # one admission on one scope: admitted, bucket 7


class FakeRedis:
    """A loopback server speaking RESP, answering every command with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.commands: list[list[bytes]] = []

    def url(self, auth: str = "") -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://{auth}127.0.0.1:{port}/0"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self._writers.append(writer)
        buffer = bytearray()
        try:
            while data := await reader.read(65536):
                buffer += data
                position = 0
                while True:
                    try:
                        command, position = parse_reply(buffer, position)
                    except Incomplete:
                        break
                    self.commands.append(command)
                    reply = self._answer(command, number)
                    if reply is not None:
                        writer.write(reply)
                del buffer[:position]
        except ConnectionError:
            pass
        finally:
            writer.close()


Start = Callable[[Answer], Awaitable[FakeRedis]]


@pytest.fixture
async def fake_redis() -> AsyncIterator[Start]:
    """Starts fake servers for the test; stops them after it."""
    fakes: list[FakeRedis] = []

    async def start(answer: Answer) -> FakeRedis:
        fake = FakeRedis(answer)
        await fake.start()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        await fake.stop()


def first_connection(bad: bytes | None, good: bytes) -> Answer:
    """``bad`` (None: silence) to every command on the first connection, ``good`` after."""
    return lambda command, number: bad if number == 0 else good


async def timed(call: Awaitable[object]) -> float:
    """Seconds until ``call`` fails with StoreUnavailable (it must)."""
    began = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(call, 10.0)  # a guard: a hang fails the test, not the suite
    return time.monotonic() - began


@pytest.mark.parametrize(
    "wrong",
    [b"*1\r\n$1\r\nx\r\n", b":1\r\n", b"+OK\r\n", b"*-1\r\n"],
    ids=["array", "integer", "status", "nil-array"],
)
async def test_a_reply_of_the_wrong_type_fails_the_call_and_resets_the_connection(
    fake_redis: Start, wrong: bytes
) -> None:
    fake = await fake_redis(first_connection(wrong, b"$2\r\nok\r\n"))
    client = RespClient(fake.url(), timeout_s=2.0)
    waited = await timed(client.call("GET", "k", accept=BULK))
    assert waited < SLACK_S  # failed on sight, not at the deadline
    assert await client.call("GET", "k", accept=BULK) == b"ok"
    assert fake.connections == 2  # the second call had a connection of its own
    await client.close()


async def test_pipelined_calls_behind_a_wrong_reply_fail_with_it(
    fake_redis: Start,
) -> None:
    """Replies behind a wrong one may belong to other calls: none is handed out."""
    fake = await fake_redis(first_connection(b":5\r\n", b"$2\r\nok\r\n"))
    client = RespClient(fake.url(), timeout_s=2.0)
    calls = [client.send_nowait("GET", f"k{i}", accept=BULK) for i in range(3)]
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 10.0)
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    assert await client.call("GET", "k", accept=BULK) == b"ok"
    await client.close()


async def test_a_reply_nobody_asked_for_resets_the_connection(
    fake_redis: Start,
) -> None:
    """One reply too many would answer the next call with this one's reply."""

    def answer(command: list[bytes], number: int) -> bytes:
        if number == 0:
            return b"$5\r\nfirst\r\n$5\r\nextra\r\n"
        return b"$4\r\nnext\r\n"

    fake = await fake_redis(answer)
    client = RespClient(fake.url(), timeout_s=2.0)
    assert await client.call("GET", "a", accept=BULK) == b"first"
    assert await client.call("GET", "b", accept=BULK) == b"next"  # never "extra"
    assert fake.connections == 2
    await client.close()


async def test_a_reply_that_never_comes_fails_at_the_deadline(
    fake_redis: Start,
) -> None:
    fake = await fake_redis(first_connection(None, b"+PONG\r\n"))
    client = RespClient(fake.url(), timeout_s=0.3)
    first = asyncio.ensure_future(client.call("PING"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(client.call("PING"))
    waited = await timed(first)
    assert 0.25 <= waited < 0.3 + SLACK_S  # timed from a moment after the call began
    with pytest.raises(StoreUnavailable):
        await second  # on the same silent connection: it went with it
    assert await client.call("PING") == b"PONG"
    assert fake.connections == 2
    await client.close()


@pytest.mark.parametrize(
    "garbage",
    [b"?what\r\n", b":notanumber\r\n", b"$abc\r\n", b"hello world\r\n"],
    ids=["unknown-type", "bad-integer", "bad-length", "text"],
)
async def test_garbage_fails_the_call_at_once(fake_redis: Start, garbage: bytes) -> None:
    fake = await fake_redis(first_connection(garbage, b"+PONG\r\n"))
    client = RespClient(fake.url(), timeout_s=2.0)
    assert await timed(client.call("PING")) < SLACK_S
    assert await client.call("PING") == b"PONG"
    assert fake.connections == 2
    await client.close()


async def test_garbage_that_never_ends_a_reply_fails_at_the_deadline(
    fake_redis: Start,
) -> None:
    fake = await fake_redis(first_connection(b"$999999\r\nnot all of it", b"+PONG\r\n"))
    client = RespClient(fake.url(), timeout_s=0.3)
    assert await timed(client.call("PING")) < 0.3 + SLACK_S
    assert await client.call("PING") == b"PONG"
    await client.close()


async def test_an_error_reply_fails_only_its_call(
    fake_redis: Start,
) -> None:
    """An error is a reply in order: it fails its call as StoreUnavailable, and the
    connection (still in step) serves the next one."""
    replies = iter([b"-ERR boom\r\n", b"+PONG\r\n"])
    fake = await fake_redis(lambda command, number: next(replies))
    client = RespClient(fake.url(), timeout_s=2.0)
    with pytest.raises(RedisReplyError) as raised:
        await client.call("PING", accept=STATUS)
    assert isinstance(raised.value, StoreUnavailable) and "boom" in str(raised.value)
    assert await client.call("PING", accept=STATUS) == b"PONG"
    assert fake.connections == 1
    await client.close()


async def test_calls_waiting_for_a_failing_connect_share_its_failure(
    fake_redis: Start,
) -> None:
    """The first connection never answers AUTH: the calls queued behind that attempt
    fail with it at its deadline, not one deadline after another."""
    fake = await fake_redis(first_connection(None, b"+OK\r\n"))
    client = RespClient(fake.url(":secret@"), timeout_s=0.3)
    calls = asyncio.gather(*(client.call("PING") for _ in range(5)), return_exceptions=True)
    began = time.monotonic()
    results = await asyncio.wait_for(calls, 10.0)
    assert time.monotonic() - began < 0.3 + SLACK_S
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    assert fake.connections == 1
    assert await client.call("PING") == b"OK"  # AUTH then PING on a new connection
    await client.close()


@pytest.mark.parametrize(
    "wrong",
    [
        b"*1\r\n:1\r\n",
        b"$3\r\n1 0\r\n",
        b"$-1\r\n",
        b"$5\r\nwhat?\r\n",
        b"$19\r\n1 9 0 0 7 1 0 60000\r\n",
    ],
    ids=["array", "too-short", "nil", "not-integers", "unknown-refusal"],
)
async def test_the_limiter_fails_admissions_on_a_wrong_reply(
    fake_redis: Start, wrong: bytes
) -> None:
    good = b"$%d\r\n%s\r\n" % (len(ADMITTED), ADMITTED)
    fake = await fake_redis(first_connection(wrong, good))
    link = RedisLink(fake.url(), timeout_s=2.0, retry_s=0.05)
    limiter = RedisLimiter(link)
    assert await timed(limiter.admit(SCOPES, "first", 1, 30.0)) < SLACK_S
    decision = await _admit_when_up(limiter)
    assert decision.admitted and decision.at == 7
    assert fake.connections == 2
    await limiter.close()  # its release timer first, as the app does
    await link.close()


async def test_the_cache_treats_a_wrong_reply_as_a_failure(
    fake_redis: Start,
) -> None:
    fake = await fake_redis(first_connection(b"*0\r\n", b"$5\r\nentry\r\n"))
    link = RedisLink(fake.url(), timeout_s=2.0, retry_s=0.05)
    store = RedisEntryStore(link)
    assert await timed(store.get("k")) < SLACK_S
    deadline = time.monotonic() + 5
    while True:
        try:
            assert await asyncio.wait_for(store.get("k"), 10.0) == b"entry"
            break
        except StoreUnavailable:  # the link rests retry_s after a failure
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    await link.close()


async def test_the_key_store_gives_up_at_its_deadline(
    fake_redis: Start,
) -> None:
    fake = await fake_redis(lambda command, number: None)
    client = redis_py_client(fake.url(), 0.3)
    store = RedisKeyStore(client)
    waited = await timed(store.version())
    assert waited < 0.3 + SLACK_S
    await asyncio.wait_for(client.aclose(), 10.0)


async def test_the_engine_registry_gives_up_at_its_deadline(
    fake_redis: Start,
) -> None:
    fake = await fake_redis(lambda command, number: None)
    registry = RedisRegistry(fake.url(), ttl_s=6, timeout_s=0.3)
    began = time.monotonic()
    with pytest.raises(RedisError):
        await asyncio.wait_for(registry.records(), 10.0)
    assert time.monotonic() - began < 0.3 + SLACK_S
    began = time.monotonic()
    await asyncio.wait_for(registry.close(), 10.0)
    assert time.monotonic() - began < 0.3 + SLACK_S


async def _admit_when_up(limiter: RedisLimiter) -> Decision:
    """The first decision once the link's rest after the failure is over."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return await asyncio.wait_for(limiter.admit(SCOPES, "next", 1, 30.0), 10.0)
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the limiter did not reach Redis again"
            await asyncio.sleep(0.02)
