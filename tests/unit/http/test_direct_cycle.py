"""DirectCycle: the completion routes' answers written straight to the connection, with
uvicorn's cycle state kept exact (start, completion, keep-alive, a client gone)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.http.direct_cycle import DirectCycle, direct_cycle
from gateway.http.request_id import SCOPE_KEY as REQUEST_ID_KEY
from tests.unit.http.test_one_write import RecordingTransport


class _Cycle:
    """A DirectCycle on a recording transport, and how often ``on_response`` ran."""

    def __init__(
        self, keep_alive: bool = True, request_id: str | None = "req-1", version: str = "1.1"
    ) -> None:
        self.transport = RecordingTransport()
        self.responses = 0
        scope: Any = {"type": "http", "method": "POST", "http_version": version, "headers": []}
        if request_id is not None:
            scope[REQUEST_ID_KEY] = request_id
        cycle = RequestResponseCycle(
            scope=scope,
            transport=self.transport,  # type: ignore[arg-type]
            flow=FlowControl(self.transport),  # type: ignore[arg-type]
            logger=None,  # type: ignore[arg-type]
            access_logger=None,  # type: ignore[arg-type]
            access_log=False,
            default_headers=[(b"date", b"Mon, 30 Nov 2026 00:00:00 GMT")],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=self._on_response,
        )
        cycle.__class__ = DirectCycle
        self.cycle: DirectCycle = cycle  # type: ignore[assignment]
        loop = asyncio.new_event_loop()  # only ClientWatch uses the cycle's loop; not these
        loop.close()
        self.cycle.attach(loop)

    def _on_response(self) -> None:
        self.responses += 1


def test_the_scope_offers_the_cycle_weakly() -> None:
    made = _Cycle()
    scope = made.cycle.scope
    assert direct_cycle(scope) is made.cycle  # type: ignore[arg-type]
    assert direct_cycle({"type": "http"}) is None
    made.cycle.on_response = lambda: None  # the test's own link back to ``made``
    del made
    assert direct_cycle(scope) is None  # type: ignore[arg-type]  # no reference cycle


def test_a_whole_answer_is_one_write_with_every_header() -> None:
    made = _Cycle()

    async def run() -> None:
        await made.cycle.whole(201, [(b"content-type", b"application/json")], b'{"a":1}')

    asyncio.run(run())
    assert len(made.transport.writes) == 1
    written = made.transport.writes[0]
    head, _, body = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 201 Created\r\n")
    lines = head.split(b"\r\n")[1:]
    assert lines == [
        b"date: Mon, 30 Nov 2026 00:00:00 GMT",
        b"content-type: application/json",
        b"x-request-id: req-1",
        b"content-length: 7",
    ]
    assert body == b'{"a":1}'
    assert made.cycle.response_complete and made.responses == 1
    assert not made.transport.closed


def test_a_connection_not_kept_alive_says_so_and_closes() -> None:
    made = _Cycle(keep_alive=False, request_id=None)
    asyncio.run(made.cycle.whole(200, [], b""))
    assert b"connection: close\r\n" in made.transport.writes[0]
    assert b"x-request-id" not in made.transport.writes[0]
    assert made.transport.closed


def test_a_stream_is_its_head_then_one_chunk_per_part() -> None:
    made = _Cycle()

    async def run() -> None:
        await made.cycle.begin(200, [(b"content-type", b"text/event-stream")])
        assert len(made.transport.writes) == 1  # before any event
        await made.cycle.part(b"data: x\n\n")
        await made.cycle.part(b"")  # nothing to write: no empty chunk (it would end it)
        await made.cycle.end()

    asyncio.run(run())
    head, chunk, last = made.transport.writes
    assert b"transfer-encoding: chunked\r\n" in head and head.endswith(b"\r\n\r\n")
    assert chunk == b"9\r\ndata: x\n\n\r\n"
    assert last == b"0\r\n\r\n"
    assert made.responses == 1


def test_an_http_10_stream_is_the_bare_events_ended_by_the_close() -> None:
    """HTTP/1.0 has no chunked encoding: before, its clients got chunk sizes in the body."""
    made = _Cycle(version="1.0")

    async def run() -> None:
        await made.cycle.begin(200, [(b"content-type", b"text/event-stream")])
        await made.cycle.part(b"data: x\n\n")
        await made.cycle.end()

    asyncio.run(run())
    head, events = made.transport.writes
    assert b"transfer-encoding" not in head and b"connection: close\r\n" in head
    assert events == b"data: x\n\n"
    assert made.transport.closed and made.responses == 1


def test_a_client_gone_gets_nothing_and_the_cycle_stays_consistent() -> None:
    made = _Cycle()
    made.cycle.disconnected = True
    asyncio.run(made.cycle.whole(200, [], b"{}"))
    assert made.transport.writes == []
    assert made.responses == 0  # uvicorn's connection_lost handles a client gone


def test_a_header_value_with_a_line_break_is_never_written() -> None:
    made = _Cycle()
    with pytest.raises(RuntimeError, match="invalid value"):  # in any value, first or not
        asyncio.run(made.cycle.whole(200, [(b"x-0", b"ok"), (b"x-a", b"1\r\nx-b: 2")], b"{}"))
    assert made.transport.writes == []


def test_a_second_answer_is_refused() -> None:
    made = _Cycle()
    asyncio.run(made.cycle.whole(200, [], b"{}"))
    asyncio.run(made.cycle.whole(200, [], b"{}"))  # complete: dropped, as uvicorn drops it
    assert len(made.transport.writes) == 1
    with pytest.raises(RuntimeError, match="already started"):
        made.cycle._head(200, [])
