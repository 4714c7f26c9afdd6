"""A client that hangs up cancels its answer (made or streamed) through an Endpoint,
and nothing else: an answer that ends normally leaves no watcher and no cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from starlette.types import Message, Receive, Scope, Send

from gateway.http.client_watch import GRACE_S, ClientWatch
from gateway.http.context import read_body
from gateway.http.direct_cycle import DirectCycle
from gateway.http.hot_routes import Endpoint
from gateway.pipeline.results import Answer, EventStream, Result

SCOPE: Scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}


class Connection:
    """One request's ASGI ``receive`` and ``send``: the body, then ``http.disconnect``
    once :meth:`hang_up` is called (or the response has ended, as uvicorn does)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []
        self._gone = asyncio.Event()
        self._body_read = False

    async def receive(self) -> Message:
        if not self._body_read:
            self._body_read = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._gone.set()

    def hang_up(self) -> None:
        self._gone.set()


class SlowAnswer:
    """A handler that starts watching, then works until cancelled; the events say when it
    started and whether it was cancelled, ``tasks_at_start`` how many tasks ran then."""

    def __init__(self) -> None:
        self.started, self.cancelled = asyncio.Event(), asyncio.Event()
        self.tasks_at_start = 0

    async def __call__(self, scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
        await read_body(receive, 100, None)
        watch.start()
        self.tasks_at_start = len(asyncio.all_tasks())
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return Answer(b"{}", [])


async def test_a_client_leaving_during_a_non_streaming_answer_cancels_it() -> None:
    connection = Connection()
    slow = SlowAnswer()
    started, cancelled = slow.started, slow.cancelled
    answering = asyncio.create_task(Endpoint(slow)(SCOPE, connection.receive, connection.send))
    await started.wait()
    connection.hang_up()
    await asyncio.wait_for(answering, 5)  # ends normally: the cancellation was the client's
    assert cancelled.is_set()
    assert connection.sent == []  # nobody is left to answer


async def test_a_client_leaving_mid_stream_closes_the_events_and_the_stream() -> None:
    connection = Connection()
    closed: list[str] = []
    first_sent = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: 1\n\n"
            first_sent.set()
            await asyncio.sleep(60)
            yield b"data: 2\n\n"
        finally:
            closed.append("events")

    async def streaming(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
        await read_body(receive, 100, None)
        watch.start()
        return EventStream(events(), [], lambda: closed.append("stream"))

    answering = asyncio.create_task(Endpoint(streaming)(SCOPE, connection.receive, connection.send))
    await first_sent.wait()
    connection.hang_up()
    await asyncio.wait_for(answering, 5)
    assert closed == ["events", "stream"]
    assert [m.get("more_body") for m in connection.sent[1:]] == [True]  # never ended


async def test_an_answer_that_ends_leaves_no_watcher_and_no_cancellation() -> None:
    connection = Connection()

    async def quick(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
        await read_body(receive, 100, None)
        watch.start()
        return Answer(b"{}", [])

    async def request_then_more_work() -> str:
        await Endpoint(quick)(SCOPE, connection.receive, connection.send)
        await asyncio.sleep(0.05)  # the response has ended: receive now says disconnect
        return "not cancelled"

    tasks_before = len(asyncio.all_tasks())
    assert await asyncio.create_task(request_then_more_work()) == "not cancelled"
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks_before
    assert connection.sent[-1] == {"type": "http.response.body", "body": b"{}"}


async def test_a_cancellation_from_elsewhere_is_not_swallowed() -> None:
    connection = Connection()
    started = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
        await read_body(receive, 100, None)
        watch.start()
        started.set()
        await asyncio.sleep(60)
        return Answer(b"{}", [])

    answering = asyncio.create_task(Endpoint(slow)(SCOPE, connection.receive, connection.send))
    await started.wait()
    answering.cancel()  # e.g. the server shutting down
    with pytest.raises(asyncio.CancelledError):
        await answering


class LostConnection:
    """What :class:`ClientWatch` uses of a direct cycle: the connection reports its own
    loss through ``on_disconnect`` (as LimitedHttpToolsProtocol.connection_lost does)."""

    disconnected = False
    on_disconnect: Callable[[], None] | None = None

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()

    def lose(self) -> None:
        self.disconnected = True
        tell, self.on_disconnect = self.on_disconnect, None
        assert tell is not None, "nobody was watching"
        tell()


async def test_on_a_direct_cycle_the_connection_reports_the_loss_with_no_timer_or_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    connection, lost = Connection(), LostConnection()
    slow = SlowAnswer()
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    arm = loop.call_later

    def recording(delay: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(delay)
        return arm(delay, *args, **kwargs)

    monkeypatch.setattr(loop, "call_later", recording)

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        watch = ClientWatch(receive, cast(DirectCycle, lost))
        try:
            await slow(scope, receive, watch)
        except asyncio.CancelledError:
            assert watch.abandoned
            watch.swallow()
        finally:
            watch.stop()

    answering = asyncio.create_task(answer(SCOPE, connection.receive, connection.send))
    await slow.started.wait()
    assert GRACE_S not in timers  # no grace timer armed, so no watcher task will follow
    assert len(asyncio.all_tasks()) == slow.tasks_at_start
    lost.lose()
    await asyncio.wait_for(answering, 5)
    assert slow.cancelled.is_set() and lost.on_disconnect is None


async def test_on_a_direct_cycle_an_answer_that_ends_stops_listening() -> None:
    lost = LostConnection()
    watch = ClientWatch(Connection().receive, cast(DirectCycle, lost))
    watch.start()
    assert lost.on_disconnect is not None
    watch.stop()
    assert lost.on_disconnect is None and not watch.abandoned
