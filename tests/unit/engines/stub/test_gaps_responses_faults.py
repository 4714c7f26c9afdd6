"""Bug hunt: the stub engine's fault knobs (``--fail-status``, ``--hang``,
``--drop-after``, and a request's ``"stub": {"fault": ...}``) were honoured on the
completion routes but ignored on ``/v1/responses``, so no test could make a Responses
engine fail. They now act there as they do on chat completions."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from engines.stub.asgi import Message
from engines.stub.server import StubApp, StubConfig, create_stub_app
from tests.helpers.waiting import until
from tests.unit.engines.stub.test_app import FakeClient, scope

PATH = "/v1/responses"


def body(stream: bool = False, **stub: Any) -> dict[str, Any]:
    made: dict[str, Any] = {"model": "stub-model", "input": "hi", "stream": stream}
    return made | ({"stub": stub} if stub else {})


async def answer(app: StubApp, client: FakeClient) -> None:
    await asyncio.wait_for(app(scope(PATH), client.receive, client.send), timeout=1)


def status_of(sent: list[Message]) -> int:
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1
    return int(starts[0]["status"])


def bodies(sent: list[Message]) -> list[Message]:
    return [m for m in sent if m["type"] == "http.response.body"]


def deltas(sent: list[Message]) -> int:
    return sum(m["body"].count(b"event: response.output_text.delta\n") for m in bodies(sent))


async def test_fail_status_answers_every_response_with_it() -> None:
    app = create_stub_app(StubConfig(fail_status=503))
    for stream in (False, True):
        client = FakeClient(body(stream))
        await answer(app, client)
        assert status_of(client.sent) == 503
        error = orjson.loads(bodies(client.sent)[0]["body"])["error"]
        assert (error["code"], error["type"]) == ("stub_fault", "server_error")
    assert app.stats.streams_started == 0


async def test_a_requests_error_fault_is_honoured() -> None:
    app = create_stub_app(StubConfig())
    client = FakeClient(body(fault="error", status=429))
    await answer(app, client)
    assert status_of(client.sent) == 429


async def test_hang_never_answers_until_the_client_leaves() -> None:
    app = create_stub_app(StubConfig(hang=True))
    for stream in (False, True):
        client = FakeClient(body(stream))
        call = asyncio.create_task(app(scope(PATH), client.receive, client.send))
        await until(lambda: app.stats.in_flight == 1)
        assert client.sent == [] and app.stats.in_flight == 1
        client.left.set()
        await asyncio.wait_for(call, timeout=10)
    assert (app.stats.requests_cancelled, app.stats.in_flight) == (2, 0)


async def test_drop_after_cuts_a_stream_after_n_deltas() -> None:
    app = create_stub_app(StubConfig(drop_after=2, tokens=5))
    client = FakeClient(body(stream=True))
    await answer(app, client)
    assert status_of(client.sent) == 200
    assert deltas(client.sent) == 2
    assert bodies(client.sent)[-1]["more_body"] is True  # unfinished: the server cuts it
    assert b"response.completed" not in b"".join(m["body"] for m in bodies(client.sent))
    stats = app.stats
    assert (stats.streams_started, stats.streams_dropped, stats.streams_completed) == (1, 1, 0)


async def test_drop_after_leaves_whole_answers_alone() -> None:
    """As on chat completions, ``--drop-after`` cuts streams only."""
    app = create_stub_app(StubConfig(drop_after=2))
    client = FakeClient(body())
    await answer(app, client)
    assert orjson.loads(bodies(client.sent)[0]["body"])["status"] == "completed"


async def test_a_requests_drop_cuts_a_whole_answer_half_way() -> None:
    app = create_stub_app(StubConfig())
    client = FakeClient(body(fault="drop"))
    await answer(app, client)
    start = next(m for m in client.sent if m["type"] == "http.response.start")
    length = int(dict(start["headers"])[b"content-length"])
    (sent,) = bodies(client.sent)
    assert sent["more_body"] is True and len(sent["body"]) == length // 2


async def test_a_requests_hang_after_deltas_holds_the_stream_open() -> None:
    app = create_stub_app(StubConfig(tokens=5))
    client = FakeClient(body(stream=True, fault="hang", after=2))
    call = asyncio.create_task(app(scope(PATH), client.receive, client.send))
    await until(lambda: deltas(client.sent) == 2)
    assert deltas(client.sent) == 2 and not call.done()
    client.left.set()
    await asyncio.wait_for(call, timeout=10)
    assert (app.stats.streams_cancelled, app.stats.in_flight) == (1, 0)


async def test_without_faults_a_stream_completes() -> None:
    app = create_stub_app(StubConfig(tokens=3))
    client = FakeClient(body(stream=True))
    await answer(app, client)
    assert deltas(client.sent) == 3
    assert bodies(client.sent)[-1]["more_body"] is False
    assert app.stats.streams_completed == 1
