"""OneWriteCycle: a content-length answer's head goes out with its body, in one write;
a stream's head goes out at once."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from gateway.http.one_write import OneWriteCycle


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def _cycle(transport: RecordingTransport, method: str = "POST", keep_alive: bool = True) -> Any:
    scope: Any = {"type": "http", "method": method, "http_version": "1.1", "headers": []}
    cycle = RequestResponseCycle(
        scope=scope,
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=None,  # type: ignore[arg-type]
        access_logger=None,  # type: ignore[arg-type]
        access_log=False,
        default_headers=[],
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    cycle.__class__ = OneWriteCycle
    return cycle


def _start(headers: list[tuple[bytes, bytes]]) -> Any:
    return {"type": "http.response.start", "status": 200, "headers": headers}


def test_a_content_length_answer_is_one_write() -> None:
    async def run() -> RecordingTransport:
        transport = RecordingTransport()
        cycle = _cycle(transport)
        await cycle.send(_start([(b"content-length", b"2")]))
        assert transport.writes == []  # held until the body comes
        await cycle.send({"type": "http.response.body", "body": b"{}"})
        return transport

    transport = asyncio.run(run())
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"content-length: 2\r\n\r\n{}")


def test_an_empty_body_still_sends_the_head_and_close_is_kept() -> None:
    async def run() -> RecordingTransport:
        transport = RecordingTransport()
        cycle = _cycle(transport, keep_alive=False)
        await cycle.send(_start([(b"content-length", b"0")]))
        await cycle.send({"type": "http.response.body", "body": b""})
        return transport

    transport = asyncio.run(run())
    assert len(transport.writes) == 1
    assert b"connection: close\r\n" in transport.writes[0]
    assert transport.closed


def test_a_stream_head_goes_out_before_its_first_event() -> None:
    async def run() -> RecordingTransport:
        transport = RecordingTransport()
        cycle = _cycle(transport)
        await cycle.send(_start([(b"content-type", b"text/event-stream")]))
        assert len(transport.writes) == 1  # chunked: not held
        assert b"transfer-encoding: chunked" in transport.writes[0]
        await cycle.send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
        return transport

    transport = asyncio.run(run())
    assert transport.writes[1] == b"9\r\ndata: x\n\n\r\n"
    assert transport.writes[-1] == b"0\r\n\r\n"


def test_a_head_answer_is_not_held() -> None:
    async def run() -> RecordingTransport:
        transport = RecordingTransport()
        cycle = _cycle(transport, method="HEAD")
        await cycle.send(_start([(b"content-length", b"5")]))
        assert len(transport.writes) == 1
        await cycle.send({"type": "http.response.body", "body": b""})
        return transport

    asyncio.run(run())
