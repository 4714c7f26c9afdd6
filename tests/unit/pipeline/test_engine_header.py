"""``x-vgate-engine``: only with ``server.debug_headers``, and then the engine's id."""

from __future__ import annotations

import pytest

from gateway.pipeline.results import Answer, EventStream
from gateway.pool.display import engine_id
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import ENGINES, STREAM_EVENTS, chat_body, completion, drain, world

HEADER = b"x-vgate-engine"


def answers(_: FakeRequest) -> Scripted:
    return Scripted(body=completion(), events=STREAM_EVENTS)


@pytest.mark.parametrize("stream", [False, True])
async def test_no_engine_header_by_default(stream: bool) -> None:
    w = world(answers)
    result = await w.ask(chat_body(stream=stream), cache_control="no-cache")
    assert isinstance(result, Answer | EventStream)
    assert HEADER not in dict(result.headers)
    if isinstance(result, EventStream):
        await drain(result)


@pytest.mark.parametrize("stream", [False, True])
async def test_debug_headers_name_the_engine_by_id(stream: bool) -> None:
    w = world(answers, server={"debug_headers": True})
    result = await w.ask(chat_body(stream=stream), cache_control="no-cache")
    assert isinstance(result, Answer | EventStream)
    named = dict(result.headers)[HEADER].decode()
    assert named in {engine_id(url) for url in ENGINES}
    assert "://" not in named
    if isinstance(result, EventStream):
        await drain(result)
