"""An in-process :class:`~gateway.upstream.transport.Upstream` for tests.

In the spirit of httpx's ``MockTransport``: a handler decides what each engine
answers, and the fake records what was sent and which streams are still open,
so tests can drive every path of the pipeline (failover, timeouts, streams that
break, clients that leave) without sockets and check that nothing stays held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from gateway.errors import UpstreamError, UpstreamStatusError, UpstreamTimeoutError
from gateway.upstream.deadlines import Deadlines
from gateway.upstream.transport import (
    CLOSED_MID_ANSWER,
    EngineUnreachable,
    PrimedEvents,
    UpstreamReply,
)


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """One request the fake received."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    stream: bool

    def json(self) -> object:
        return orjson.loads(self.body)


@dataclass(slots=True)
class Scripted:
    """What an engine does with one request.

    ``events``: the stream's batches, each one or more complete SSE events;
    ``break_after``: raise a mid-stream failure after that many batches;
    ``unreachable``: refuse the connection (nothing reached the engine);
    ``gate``: wait for this event before answering (or before each batch after
    the first, with ``gate_each_batch``), to hold a request in flight.
    """

    status: int = 200
    body: bytes = b"{}"
    events: Sequence[bytes] = ()
    break_after: int | None = None
    unreachable: bool = False
    gate: asyncio.Event | None = None
    gate_each_batch: bool = False
    retry_after: str | None = None
    """The answer's ``Retry-After`` header (an error's), as an engine would send it."""
    retry_after_ms: str | None = None
    """The answer's ``retry-after-ms`` header, likewise."""


Handler = Callable[[FakeRequest], Scripted | Awaitable[Scripted]]


class FakeStream(PrimedEvents):
    """A scripted SSE response. A gated batch waits at most ``idle_s``, and no later
    than the stream's ``deadline``, then raises what the real clients raise."""

    def __init__(
        self, script: Scripted, streams: set[FakeStream], idle_s: float | None = None
    ) -> None:
        self._script = script
        self._streams = streams
        self._idle_s = idle_s
        self._sent = 0
        self.deadline: float | None = None
        self.closed = False
        streams.add(self)

    async def _next_batch(self) -> bytes | None:
        script = self._script
        if script.break_after is not None and self._sent >= script.break_after:
            raise UpstreamError(CLOSED_MID_ANSWER)
        if self._sent >= len(script.events):
            return None
        if script.gate is not None and script.gate_each_batch and self._sent:
            await self._until(script.gate)
        batch = script.events[self._sent]
        self._sent += 1
        return batch

    async def _until(self, gate: asyncio.Event) -> None:
        idle_at = None if self._idle_s is None else asyncio.get_running_loop().time() + self._idle_s
        deadline = self.deadline
        total = deadline is not None and (idle_at is None or deadline <= idle_at)
        try:
            async with asyncio.timeout_at(deadline if total else idle_at):
                await gate.wait()
        except TimeoutError:
            raise UpstreamTimeoutError(
                "the engine did not finish within the total timeout (total_s)"
                if total
                else "the engine sent nothing for longer than the idle timeout (idle_s)"
            ) from None

    def close(self) -> None:
        self.closed = True
        self._streams.discard(self)


@dataclass
class FakeUpstream:
    """Answers every request with ``handler``'s :class:`Scripted` reply."""

    handler: Handler
    requests: list[FakeRequest] = field(default_factory=list)
    open_streams: set[FakeStream] = field(default_factory=set)
    healthy: set[str] = field(default_factory=set)
    """Engine URLs whose ``/health`` probe passes."""

    async def _script(self, request: FakeRequest, wait_s: float | None = None) -> Scripted:
        """``request``'s script, once its gate opens (within ``wait_s``, if given: a
        stream's head comes within ``first_s``, as from the real clients)."""
        self.requests.append(request)
        made = self.handler(request)
        script = made if isinstance(made, Scripted) else await made
        if script.unreachable:
            raise EngineUnreachable("connection refused")
        if script.gate is not None and not script.gate_each_batch:
            try:
                async with asyncio.timeout(wait_s):
                    await script.gate.wait()
            except TimeoutError:
                raise UpstreamTimeoutError("engine did not start answering in time") from None
        return script

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> UpstreamReply:
        script = await self._script(FakeRequest(url, body, dict(headers), False))
        return UpstreamReply(
            script.status,
            "application/json",
            script.body,
            retry_after=script.retry_after,
            retry_after_ms=script.retry_after_ms,
        )

    async def open_stream(
        self, url: str, body: bytes, headers: Mapping[str, str], deadlines: Deadlines
    ) -> FakeStream:
        request = FakeRequest(url, body, dict(headers), True)
        script = await self._script(request, deadlines.first_s)
        if script.status >= 400:
            raise UpstreamStatusError(
                script.status,
                script.body,
                "application/json",
                script.retry_after,
                script.retry_after_ms,
            )
        return FakeStream(script, self.open_streams, deadlines.idle_s)

    async def probe(self, url: str, headers: Mapping[str, str] | None = None) -> bool:
        return url in self.healthy

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        return None


def sse(*chunks: object, done: bool = True) -> bytes:
    """SSE events for ``chunks`` (JSON-encoded), then ``[DONE]`` unless ``done`` is False."""
    events = b"".join(b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in chunks)
    return events + (b"data: [DONE]\n\n" if done else b"")
