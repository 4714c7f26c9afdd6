"""The lean upstream client: requests to engines over pooled asyncio connections.

It implements :class:`gateway.upstream.transport.Upstream` with the same timeouts,
errors and failover signals as the aiohttp client (:mod:`gateway.upstream.client`),
which profiles showed to be the largest share of the gateway's CPU. Per request it
builds one bytes object (:func:`gateway.upstream.target.request_bytes`), takes a
keep-alive connection (:class:`gateway.upstream.connection_pool.ConnectionPool`)
and reads the answer with httptools (:class:`gateway.upstream.connection.EngineConnection`).
Health probes, metrics scrapes and model lists (a few GETs a second) go over the
same pool, each within :data:`PROBE_TIMEOUT_S`; so a gateway on this client never
loads aiohttp (about 9.6 MB resident, measured with its imports).

Timeouts, as :mod:`gateway.upstream.deadlines` names them: ``connect_s`` opening a
connection (:class:`EngineUnreachable`); a whole answer within ``answer_s``; a
stream's head and first event within ``first_s`` (``ttft_s`` when set, else
``idle_s``), each later read within ``idle_s``, and all of it by the stream's
``deadline`` (``total_s``, set by the forwarder, which also bounds the first event
with ``ttft_s``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from gateway.upstream.connection import EngineConnection
from gateway.upstream.connection_pool import ConnectionPool
from gateway.upstream.deadlines import (
    BUSY_AHEAD_S,
    Deadlines,
    first_event_wait_until,
    stream_timeout,
)
from gateway.upstream.sse_framing import EventFramer
from gateway.upstream.target import Target, get_request_bytes, request_bytes
from gateway.upstream.transport import (
    EngineUnreachable,
    PrimedEvents,
    UpstreamReply,
    stream_refused,
)

log = logging.getLogger("vgate.upstream")
_TARGETS_KEPT = 4096
"""Parsed URLs remembered (engines x paths; a bound, not a tuning knob)."""
PROBE_TIMEOUT_S = 2.0
"""How long a health probe or metrics scrape may take, connecting included."""


class LeanStream(PrimedEvents):
    """An open SSE response (:class:`gateway.upstream.transport.EventSource`).

    Closing before the end closes the connection, which is how vLLM learns that the
    client went away and aborts the generation; a stream read to its end hands the
    connection back for reuse.
    """

    def __init__(self, conn: EngineConnection, pool: ConnectionPool, deadlines: Deadlines) -> None:
        self._conn: EngineConnection | None = conn
        self._pool = pool
        self._deadlines = deadlines
        self._idle_s = deadlines.idle_s
        self._wait_s = deadlines.first_s  # the first event waits by ttft_s, if set; then idle_s
        self._framer = EventFramer()
        self.deadline: float | None = None

    async def _next_batch(self) -> bytes | None:
        """The next complete events (waiting for one); None at the end. The wait is for
        a whole event: an engine that trickles bytes without ending one still times out."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("the stream was closed")
        idle_at = conn.loop.time() + self._wait_s  # (its loop's clock: no loop lookup)
        total = self.deadline is not None and self.deadline <= idle_at
        framer = self._framer
        while True:
            try:
                data = await conn.read_some(self.deadline if total else idle_at)
            except TimeoutError:
                raise UpstreamTimeoutError(stream_timeout(self._deadlines, total)) from None
            if not data:
                return None
            ready = framer.feed(data)
            if ready is not None:
                self._wait_s = self._idle_s
                return ready

    def close(self) -> None:
        """Hand the connection back once (it may serve another request right after)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn)


class LeanUpstream:
    """Engine requests, probes and scrapes on a pool of keep-alive connections."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._pool = ConnectionPool(
            settings.max_connections, settings.keepalive_s, settings.engine_connection_limit
        )
        self._targets: dict[str, Target] = {}

    async def start(self) -> None:
        """Nothing to start: connections are made on first use."""

    async def close(self) -> None:
        self._pool.close()

    def _target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            try:
                target = Target.parse(url)
            except ValueError as exc:  # its words may show the URL: logged, not told
                log.warning("an engine URL cannot be used: %s", exc)
                raise UpstreamError("the engine's URL cannot be used") from None
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> UpstreamReply:
        """POST and read the whole answer within ``answer_s``; error statuses are replies."""
        target = self._target(url)
        request = request_bytes(target, headers, body)
        conn = self._pool.take_idle(target.origin)
        # The loop's clock: the connection's loop when there is one (no lookup of the
        # running loop, a getpid system call on Python 3.11, on every request).
        loop = conn.loop if conn is not None else asyncio.get_running_loop()
        deadline = loop.time() + deadlines.answer_s
        if conn is None:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._pool.connect(
                        target, deadlines.connect_s, wait_until=deadline - BUSY_AHEAD_S
                    )
            except TimeoutError:
                raise UpstreamTimeoutError(
                    "engine did not answer within the read timeout"
                ) from None
        try:
            conn.send(request)
            payload = await conn.body(deadline)
        except TimeoutError:
            raise UpstreamTimeoutError("engine did not answer within the read timeout") from None
        finally:
            self._pool.release(conn)
        reply = UpstreamReply(conn.status, conn.content_type, payload)
        if conn.status >= 400:
            reply.retry_after = conn.retry_after
            reply.retry_after_ms = conn.retry_after_ms
        return reply

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> LeanStream:
        """POST and return once the engine has answered ``200 text/event-stream`` (its
        head within ``idle_s``); an error status raises :class:`UpstreamStatusError`,
        any other answer :class:`UpstreamError` (:func:`stream_refused`)."""
        target = self._target(url)
        request = request_bytes(target, headers, body)
        conn = self._pool.take_idle(target.origin)
        if conn is None:
            conn = await self._pool.connect(
                target, deadlines.connect_s, wait_until=first_event_wait_until(deadlines)
            )
        loop = conn.loop
        try:
            conn.send(request)
            await conn.response_head(loop.time() + deadlines.first_s)
            if conn.status >= 400:
                raise UpstreamStatusError(
                    conn.status,
                    await self._error_body(conn, deadlines),
                    conn.content_type,
                    conn.retry_after,
                    conn.retry_after_ms,
                )
            if conn.status != 200 or conn.content_type != "text/event-stream":
                # It answered, with something else than events (:func:`stream_refused`).
                refused = stream_refused(conn.status, conn.content_type)
                raise UpstreamError(f"engine answered badly: {refused}")
        except TimeoutError:
            self._pool.release(conn)
            raise UpstreamTimeoutError("engine did not start answering in time") from None
        except BaseException:
            self._pool.release(conn)
            raise
        return LeanStream(conn, self._pool, deadlines)

    @staticmethod
    async def _error_body(conn: EngineConnection, deadlines: Deadlines) -> bytes:
        """The body of an error answer, or nothing when it does not come in time."""
        try:
            return await conn.body(asyncio.get_running_loop().time() + deadlines.idle_s)
        except (TimeoutError, UpstreamError):
            return b""

    async def probe(self, url: str, headers: Mapping[str, str] | None = None) -> bool:
        """True when ``GET {url}/health`` answers 200 within :data:`PROBE_TIMEOUT_S`."""
        reply = await self._get(f"{url}/health", headers)
        return reply is not None and reply.status == 200

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        """``GET url`` as UTF-8 text within :data:`PROBE_TIMEOUT_S`, or None (not 200,
        no answer in time, or not text)."""
        reply = await self._get(url, headers)
        if reply is None or reply.status != 200:
            return None
        try:
            return reply.body.decode()
        except UnicodeDecodeError:
            return None

    async def _get(self, url: str, headers: Mapping[str, str] | None) -> UpstreamReply | None:
        """A whole GET answer within :data:`PROBE_TIMEOUT_S`, or None when there is none."""
        try:
            target = self._target(url)
            request = get_request_bytes(target, headers or {})
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                conn = self._pool.take_idle(target.origin) or await self._pool.connect(
                    target,
                    PROBE_TIMEOUT_S,
                    wait=False,  # never queued behind requests
                )
                try:
                    conn.send(request)
                    payload = await conn.body(None)
                finally:
                    self._pool.release(conn)
        except (TimeoutError, UpstreamError, EngineUnreachable):
            return None
        return UpstreamReply(conn.status, conn.content_type, payload)
