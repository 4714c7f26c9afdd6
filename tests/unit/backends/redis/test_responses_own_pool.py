"""The Responses store keeps its commands off the shared request-path connection and
leaves the shared link's state alone (hunt: 8 MB records retrieved 16 at a time over
:attr:`RedisLink.fast` held the limiter's and the cache's commands past their 0.25 s
deadline, and a timeout there marked Redis down for every tenant).

Against a real redis-server, through a proxy that holds any large reply until told."""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.backends.redis.link import RedisLink
from gateway.backends.redis.responses import RedisResponseStore
from gateway.errors import StoreUnavailable

BIG = b"r" * (2 << 20)
_LARGE_REPLY = re.compile(rb"\$(\d{7,})\r\n")


class HoldingProxy:
    """TCP proxy to Redis that holds a connection's replies from the first bulk reply
    of a megabyte or more until :attr:`release` is set."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = ""
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, hold: bool
        ) -> None:
            holding = False
            with contextlib.suppress(OSError):
                while data := await source.read(1 << 16):
                    if hold and not holding and _LARGE_REPLY.search(data):
                        holding = True
                        self.held.set()
                        await self.release.wait()
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pump(reader, up_writer, False), pump(up_reader, writer, True))


@contextlib.asynccontextmanager
async def holding_proxy(redis_url: str) -> AsyncIterator[HoldingProxy]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = HoldingProxy(port)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy.url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    try:
        yield proxy
    finally:
        proxy.release.set()
        server.close()


async def test_a_held_large_record_neither_blocks_nor_downs_the_shared_link(
    redis_url: str,
) -> None:
    async with holding_proxy(redis_url) as proxy:
        link = RedisLink(proxy.url, timeout_s=0.25, retry_s=60.0)
        prefix = f"test:{uuid.uuid4().hex}:"
        store = RedisResponseStore(link, prefix=prefix)  # over link.client: its deadline
        try:
            assert await store.put("big", BIG, 60, "alice", None)
            reading = asyncio.ensure_future(store.get("big"))
            await proxy.held.wait()
            # The limiter's and the cache's connection answers meanwhile ...
            assert await link.fast.call("PING") in (b"PONG", "PONG")
            # ... and the store's own timeout is its caller's 503, not an outage.
            with pytest.raises(StoreUnavailable):
                await reading
            assert link.failures == 0
            link.check()  # not marked down
        finally:
            await link.close()


async def test_a_slow_large_record_is_read_within_the_stores_longer_deadline(
    redis_url: str,
) -> None:
    async with holding_proxy(redis_url) as proxy:
        link = RedisLink(proxy.url, timeout_s=0.25, retry_s=60.0)
        store = RedisResponseStore.connect(proxy.url, link, 0.25)
        try:
            assert await store.put("big", BIG, 60, "bob", None)
            reading = asyncio.ensure_future(store.get("big"))
            await proxy.held.wait()
            assert await link.fast.call("PING") in (b"PONG", "PONG")
            done, _ = await asyncio.wait({reading}, timeout=0.3)  # past redis.timeout_s
            assert not done  # still waiting: the store's deadline is longer
            proxy.release.set()
            assert await reading == BIG
            assert link.failures == 0
        finally:
            await store.close()
            await link.close()


async def test_redis_known_down_fails_at_once(redis_url: str) -> None:
    link = RedisLink(redis_url, timeout_s=0.25, retry_s=60.0)
    store = RedisResponseStore(link, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        link.failed(StoreUnavailable("the limiter saw it"))
        with pytest.raises(StoreUnavailable):
            await store.get("any")
        with pytest.raises(StoreUnavailable):
            await store.usage("alice")
    finally:
        await link.close()


async def test_after_a_call_redis_did_not_answer_reads_fail_at_once_until_one_succeeds(
    redis_url: str,
) -> None:
    """Follow-ups load their records a few at a time per key: each waiting the whole
    deadline in turn on a silent Redis held the last for several deadlines. After a
    call that got no answer, reads fail at once (the shared link untouched); a write is
    still tried, and its success ends that."""
    async with holding_proxy(redis_url) as proxy:
        link = RedisLink(proxy.url, timeout_s=0.25, retry_s=60.0)
        store = RedisResponseStore(link, prefix=f"test:{uuid.uuid4().hex}:", timeout_s=0.3)
        try:
            assert await store.put("big", BIG, 60, "carol", None)
            with pytest.raises(StoreUnavailable):
                await store.get("big")  # held past the deadline
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(StoreUnavailable):
                await store.owns("big", "carol")  # Redis would answer this one
            assert loop.time() - began < 0.1
            assert link.failures == 0
            link.check()  # the limiter and the cache still use Redis
            assert await store.put("small", b"{}", 60, "carol", None)  # tried all the same
            assert await store.owns("small", "carol")
        finally:
            proxy.release.set()
            await link.close()
