"""The one pooled HTTP client the gateway uses to reach engines.

aiohttp rather than httpx: on these 2-core machines a FastAPI proxy built on
httpx fell to ~330 requests/s at 64 connections while the same proxy on aiohttp
held ~3,500 (DESIGN.md §7); our own benchmark (benchmarks/) re-measures it.

Transport exceptions are translated here, at the boundary, into
:mod:`gateway.errors` types. :class:`EngineUnreachable` is the one retryable
failure: nothing reached the engine, so another engine may be tried.

The pool's limit (``max_connections``) is kept here, by a semaphore of request
slots, not by aiohttp's connector: aiohttp's ``connect`` timeout covers waiting for a
free pooled connection and connecting alike, and both end as the same
``ConnectionTimeoutError``, so a healthy engine at the pool's limit was taken for an
unreachable one (marked down, its breaker charged). A request that waits for a slot
longer than ``connect_s``, or past its own deadline, is :class:`EngineBusy` (503
``overloaded``, the engine left alone), as with the lean client; a connect that fails
or times out is still :class:`EngineUnreachable`. Probes and scrapes take no slot, so
they never queue behind requests (the connector itself has no limit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import aiohttp

from gateway.config.upstream import UpstreamSettings
from gateway.errors import UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from gateway.upstream.deadlines import (
    BUSY_AHEAD_S,
    Deadlines,
    first_event_wait_until,
    stream_timeout,
)
from gateway.upstream.sse_framing import EventFramer
from gateway.upstream.transport import (
    CLOSED_MID_ANSWER,
    CONNECTION_BROKE,
    INVALID_RESPONSE,
    MAX_ANSWER_BYTES,
    EngineBusy,
    EngineUnreachable,
    PrimedEvents,
    UpstreamReply,
    redirect_refused,
    stream_refused,
    too_large_answer,
)

_PROBE_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


_UNREACHABLE = (
    aiohttp.ClientConnectorError,  # refused, no route, DNS
    aiohttp.ConnectionTimeoutError,  # no connection within connect_s: never reached the engine
    aiohttp.ServerDisconnectedError,
)


log = logging.getLogger("vgate.upstream")


def told_failure(exc: aiohttp.ClientError, what: str) -> UpstreamError:
    """``exc``, which broke an engine's ``what`` (request or stream), as the client is
    told it: plain words, never aiohttp's class name; the detail is logged."""
    log.warning("engine %s failed: %s: %s", what, type(exc).__name__, exc)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return UpstreamError(CLOSED_MID_ANSWER)
    if isinstance(exc, aiohttp.ClientResponseError):  # its answer could not be parsed
        return UpstreamError(INVALID_RESPONSE)
    return UpstreamError(CONNECTION_BROKE)


class UpstreamStream(PrimedEvents):
    """An open SSE response from an engine (:class:`gateway.upstream.transport.EventSource`).

    Closing before the end closes the TCP connection, which is how vLLM learns
    that the client went away and aborts the generation.
    """

    def __init__(
        self, response: aiohttp.ClientResponse, deadlines: Deadlines, slots: asyncio.Semaphore
    ) -> None:
        self._response = response
        self._slots: asyncio.Semaphore | None = slots
        """The pool's request slots, this stream's one handed back on :meth:`close`."""
        self._framer = EventFramer()
        self.finished = False
        self.deadline: float | None = None  # loop time by which the whole stream must end
        self._deadlines = deadlines
        self._wait_s = deadlines.first_s  # the first read waits by ttft_s, if set; then idle_s
        self._loop = asyncio.get_running_loop()

    async def _next_batch(self) -> bytes | None:
        """The next complete events (waiting for one, as a whole: see :mod:`.lean`);
        None at the end."""
        wait_at = self._loop.time() + self._wait_s
        total = self.deadline is not None and self.deadline <= wait_at
        try:
            async with asyncio.timeout_at(self.deadline if total else wait_at):
                while True:
                    data = await self._response.content.readany()
                    if not data:
                        self.finished = True
                        return None
                    ready = self._framer.feed(data)
                    if ready is not None:
                        self._wait_s = self._deadlines.idle_s
                        return ready
        except TimeoutError:
            raise UpstreamTimeoutError(stream_timeout(self._deadlines, total)) from None
        except aiohttp.ClientError as exc:
            raise told_failure(exc, "stream") from None

    def close(self) -> None:
        if self.finished:
            self._response.release()
        else:
            self._response.close()
        slots, self._slots = self._slots, None
        if slots is not None:  # (once, however often it is closed)
            slots.release()


class UpstreamClient:
    """A shared aiohttp session with a connection pool sized for many engines
    (:class:`gateway.upstream.transport.Upstream`)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self._settings = settings
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(settings.max_connections)
        """One per request to an engine (each holds a connection while it lasts): the
        pool's limit (the module's docstring says why not aiohttp's)."""
        self._timeouts: dict[Deadlines, tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]] = {}
        """aiohttp's timeouts per set of deadlines (one per model), made on first use."""

    def _timeouts_of(
        self, deadlines: Deadlines
    ) -> tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]:
        """``(answer, stream)`` timeouts: a whole answer within ``answer_s``; a stream
        with none here (its head within ``first_s``: :meth:`open_stream`; its reads:
        :class:`UpstreamStream`)."""
        made = self._timeouts.get(deadlines)
        if made is None:
            # ``connect``: resolving and connecting (the connector never waits for a
            # free connection: a request waits for its slot first, :meth:`_wait_for_slot`).
            connect_s = deadlines.connect_s
            answer = aiohttp.ClientTimeout(
                total=deadlines.answer_s, connect=connect_s, sock_connect=connect_s
            )
            stream = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s)
            made = self._timeouts[deadlines] = (answer, stream)
        return made

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,  # no limit here: the request slots are the pool's (probes take none)
            limit_per_host=0,
            keepalive_timeout=self._settings.keepalive_s,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            headers={"Accept-Encoding": "identity"},  # as the lean client asks
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamClient.start() was not awaited")
        return self._session

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> UpstreamReply:
        """POST and read the whole answer within ``answer_s`` (a wait for a slot
        included); error statuses come back as replies, not raised."""
        limits = self._timeouts_of(deadlines)[0]
        slots = self._slots
        if slots.locked():
            limits = await self._answer_after_slot(deadlines, limits)
        else:
            await slots.acquire()  # at once
        try:
            async with self.session.post(
                url, data=body, headers=headers, timeout=limits, allow_redirects=False
            ) as response:
                _check_answer(response)
                payload = await _read_bounded(response)
                reply = UpstreamReply(response.status, response.content_type, payload)
                if response.status >= 400:
                    reply.retry_after = response.headers.get("Retry-After")
                    reply.retry_after_ms = response.headers.get("retry-after-ms")
                return reply
        except _UNREACHABLE as exc:
            raise EngineUnreachable(str(exc) or type(exc).__name__) from None
        except TimeoutError:
            raise UpstreamTimeoutError("engine did not answer within the read timeout") from None
        except aiohttp.ClientError as exc:
            raise told_failure(exc, "request") from None
        finally:
            slots.release()

    async def _answer_after_slot(
        self, deadlines: Deadlines, limits: aiohttp.ClientTimeout
    ) -> aiohttp.ClientTimeout:
        """Wait for a slot for a whole answer, within ``connect_s`` and ending before
        ``answer_s`` does; ``limits`` with what is left of ``answer_s`` after it."""
        deadline = asyncio.get_running_loop().time() + deadlines.answer_s
        now = await self._wait_for_slot(deadlines, deadline - BUSY_AHEAD_S)
        return aiohttp.ClientTimeout(
            total=deadline - now, connect=limits.connect, sock_connect=limits.sock_connect
        )

    async def _wait_for_slot(self, deadlines: Deadlines, wait_until: float | None) -> float:
        """Take a request slot once one comes free (the pool is full): waiting at most
        ``connect_s``, and ending by ``wait_until`` (loop time: the request's own
        deadline, less :data:`BUSY_AHEAD_S`) when given; then :class:`EngineBusy`. The
        loop time when the slot came."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        until = start + deadlines.connect_s
        if wait_until is not None and wait_until < until:
            until = wait_until
        try:
            async with asyncio.timeout_at(until):
                await self._slots.acquire()
        except TimeoutError:
            raise EngineBusy(
                f"no free connection to the engines within {max(until - start, 0):.3g} s "
                "(connect_timeout_s, or the request's deadline if sooner; all "
                f"upstream.max_connections = {self._settings.max_connections} serving)"
            ) from None
        return loop.time()

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> UpstreamStream:
        """POST and return once the engine has answered ``200 text/event-stream``.

        An error status raises :class:`UpstreamStatusError` carrying the engine's body,
        any other answer :class:`UpstreamError` (:func:`stream_refused`).
        """
        limits = self._timeouts_of(deadlines)[1]
        slots = self._slots
        if slots.locked():  # waiting ends before the forwarder's first-event deadline
            await self._wait_for_slot(deadlines, first_event_wait_until(deadlines))
        else:
            await slots.acquire()  # at once
        try:
            try:
                async with asyncio.timeout(deadlines.first_s):
                    response = await self.session.post(
                        url, data=body, headers=headers, timeout=limits, allow_redirects=False
                    )
            except _UNREACHABLE as exc:
                raise EngineUnreachable(str(exc) or type(exc).__name__) from None
            except TimeoutError:
                raise UpstreamTimeoutError("engine did not start answering in time") from None
            except aiohttp.ClientError as exc:
                raise told_failure(exc, "request") from None
            if 400 <= response.status <= 599:
                async with response:
                    payload = await self._read_error(response)
                raise UpstreamStatusError(
                    response.status,
                    payload,
                    response.content_type,
                    response.headers.get("Retry-After"),
                    response.headers.get("retry-after-ms"),
                )
            try:
                _check_answer(response)
                refused = stream_refused(response.status, response.content_type)
                if refused is not None:  # it answered, with something else than events
                    raise UpstreamError(f"engine answered badly: {refused}")
            except UpstreamError:
                response.close()
                raise
        except BaseException:
            slots.release()  # (a stream hands its slot back when closed)
            raise
        return UpstreamStream(response, deadlines, slots)

    async def probe(self, url: str, headers: Mapping[str, str] | None = None) -> bool:
        """True when ``GET {url}/health`` answers 200 within 2 s."""
        try:
            async with self.session.get(
                f"{url}/health", headers=headers, timeout=_PROBE_TIMEOUT, allow_redirects=False
            ) as response:
                await _read_bounded(response)
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError, UpstreamError):
            return False

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        """``GET url`` as text within 2 s, or None (engine metrics scraping)."""
        try:
            async with self.session.get(
                url, headers=headers, timeout=_PROBE_TIMEOUT, allow_redirects=False
            ) as response:
                if response.status != 200:
                    return None
                return (await _read_bounded(response)).decode(response.charset or "utf-8")
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError, UpstreamError, LookupError):
            return None

    @staticmethod
    async def _read_error(response: aiohttp.ClientResponse) -> bytes:
        try:
            return await _read_bounded(response)
        except (TimeoutError, aiohttp.ClientError, UpstreamError):
            return b""


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused (:class:`UpstreamError`) once past
    :data:`MAX_ANSWER_BYTES`, as the lean client refuses it."""
    declared = response.content_length
    if declared is not None and declared > MAX_ANSWER_BYTES:
        raise UpstreamError(f"engine answered badly: {too_large_answer()}")
    parts: list[bytes] = []
    size = 0
    while data := await response.content.readany():
        size += len(data)
        if size > MAX_ANSWER_BYTES:
            raise UpstreamError(f"engine answered badly: {too_large_answer()}")
        parts.append(data)
    return b"".join(parts)


def _check_answer(response: aiohttp.ClientResponse) -> None:
    """A redirect (never followed: it could send the request, and the engine's key, to
    any host) or an answer in a content coding other than the identity asked for is an
    engine error, never a body to relay or cache (as in
    :mod:`gateway.upstream.connection`)."""
    if 300 <= response.status < 400:
        raise UpstreamError(f"engine answered badly: {redirect_refused(response.status)}")
    if response.status > 599:
        raise UpstreamError(f"engine answered badly: HTTP status {response.status}")
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise UpstreamError(
            f"engine answered badly: a body in content coding {coding[:40]!r}, "
            "not the identity asked for"
        )
