"""Only answers are cached: an engine's 200 that carries an error object (OpenAI's,
or vLLM's older ``"object": "error"``), a body cut short (a 502: not JSON), an answer with another
status than 200, or a stream with an error event in any spelling is neither kept
nor shared with the requests that joined it; every such request goes to an engine
itself. A stream's error event reaches its client in OpenAI's shape, whichever
spelling the engine used, and a delta that is the word "error" is just text."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
import pytest

from gateway.errors import UpstreamError
from gateway.errors.engine_internals import engine_failure_message
from gateway.pipeline.plan import EMBEDDINGS
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, EventStream, Replay, Result
from gateway.upstream.fake import FakeRequest, Scripted, sse
from tests.unit.pipeline.world import (
    AUTH,
    KEY,
    MODEL,
    STREAM_EVENTS,
    USAGE_CHUNK,
    World,
    chat_body,
    chunk,
    completion,
    drain,
    until,
    world,
)

GOOD = completion()
NOT_ANSWERS = {
    "error object": orjson.dumps({"error": {"message": "overloaded", "code": 503}}),
    "older error object": orjson.dumps(
        {"object": "error", "message": "overloaded", "type": "InternalServerError", "code": 500}
    ),
    "not an answer": b'{"detail": "Not Found"}',
    "cut off by vLLM": GOOD.replace(b'"finish_reason":"stop"', b'"finish_reason":"abort"'),
}


class Script:
    """Answers each request with the next of ``answers`` (the last one from then on)."""

    def __init__(self, answers: Sequence[Scripted], gate: asyncio.Event | None = None) -> None:
        self.answers = list(answers)
        self.gate = gate

    def __call__(self, request: FakeRequest) -> Scripted:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if self.gate is not None and not answer.events:
            answer.gate = self.gate
        return answer


async def body_of(result: Result) -> bytes:
    if isinstance(result, EventStream):
        return await drain(result)
    if isinstance(result, Replay):
        return result.entry.replay(result.include_usage)
    assert isinstance(result, Answer)
    return result.body


async def asked_twice(w: World, body: bytes) -> tuple[Result, Result]:
    first = await w.ask(body)
    await body_of(first)
    second = await w.ask(body)
    await body_of(second)
    return first, second


@pytest.mark.parametrize("kind", list(NOT_ANSWERS))
async def test_a_200_that_is_not_an_answer_is_not_kept(kind: str) -> None:
    w = world(Script([Scripted(body=NOT_ANSWERS[kind]), Scripted(body=GOOD)]))
    first, second = await asked_twice(w, chat_body())
    assert isinstance(first, Answer) and first.body == NOT_ANSWERS[kind]
    assert isinstance(second, Answer) and second.body == GOOD  # from the engine, not a replay
    assert len(w.upstream.requests) == 2
    third = await w.ask(chat_body())  # the answer was kept
    assert isinstance(third, Replay) and len(w.upstream.requests) == 2
    w.assert_nothing_held()


NOT_JSON = {
    "cut short": GOOD[: len(GOOD) // 2],
    "cut after an inner object": GOOD[: GOOD.rindex(b"}")],  # still ends with "}"
    "not UTF-8": GOOD.replace(b"hello", b"h\xffllo"),
    "not an object": b"[]",  # JSON, but no completion's answer
}


@pytest.mark.parametrize("kind", list(NOT_JSON))
async def test_a_200_labelled_json_that_is_not_json_is_a_502_not_kept(kind: str) -> None:
    """Before, the body was relayed as it came (the client's SDK then failed to parse
    it); now it is the engine's failure, in OpenAI's shape, and nothing is kept."""
    w = world(Script([Scripted(body=NOT_JSON[kind]), Scripted(body=GOOD)]))
    with pytest.raises(UpstreamError, match=r"not valid JSON|not a JSON object") as refused:
        await w.ask(chat_body())
    assert refused.value.status == 502 and refused.value.code == "bad_gateway"
    assert len(w.upstream.requests) == 1  # an answer: never sent to another engine
    second = await w.ask(chat_body())
    assert isinstance(second, Answer) and second.body == GOOD  # from the engine
    assert len(w.upstream.requests) == 2
    w.assert_nothing_held()


@pytest.mark.parametrize("status", [201, 203, 307])
async def test_an_answer_with_another_status_is_not_kept(status: int) -> None:
    w = world(Script([Scripted(status=status, body=GOOD), Scripted(body=GOOD)]))
    first, second = await asked_twice(w, chat_body())
    assert isinstance(first, Answer) and first.status == status
    assert isinstance(second, Answer) and second.status == 200
    assert len(w.upstream.requests) == 2
    w.assert_nothing_held()


async def test_a_follower_of_an_error_goes_to_an_engine_itself() -> None:
    gate = asyncio.Event()
    error = NOT_ANSWERS["error object"]
    keys = [{"name": "team", "key": KEY, "tpm": 100_000}]  # no concurrency limit
    w = world(
        Script([Scripted(body=error), Scripted(body=GOOD)], gate),
        auth={"enabled": True, "keys": keys},
    )
    leader = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: len(w.upstream.requests) == 1)
    follower = asyncio.create_task(w.ask(chat_body()))
    await until(lambda: sum(f.followers for f in w.service.flights.under_way()) == 1)
    gate.set()
    led, followed = await leader, await follower
    assert isinstance(led, Answer) and led.body == error
    assert isinstance(followed, Answer) and followed.body == GOOD
    assert len(w.upstream.requests) == 2
    w.assert_nothing_held()


async def test_an_embedding_answer_is_kept() -> None:
    answer = orjson.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
            "model": MODEL,
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
    )
    w = world(Script([Scripted(body=answer)]))
    body = orjson.dumps({"model": MODEL, "input": "hi"})
    meta = RequestMeta("req-1", AUTH, None, None)
    first = await w.service.handle(EMBEDDINGS, body, meta)
    second = await w.service.handle(EMBEDDINGS, body, meta)
    assert isinstance(first, Answer) and isinstance(second, Replay)
    assert len(w.upstream.requests) == 1


ERROR_EVENTS = {
    "vLLM's": b'data: {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}',
    "without the space": b'data:{"error":{"message":"boom","type":"BadGateway","code":500}}',
    "older vLLM's": (
        b'data: {"object": "error", "message": "boom", "type": "InternalServerError", "code": 500}'
    ),
    "older, compact": b'data:{"object":"error","message":"boom","code":500}',
    "behind an event line": (
        b'event: error\ndata: {"error": {"message": "boom", "type": "X", "code": 500}}'
    ),
    "over two data lines": b'data: {"error": {"message": "boom",\ndata: "code": 500}}',
}


@pytest.mark.parametrize("kind", list(ERROR_EVENTS))
async def test_a_stream_with_an_error_event_is_mapped_and_not_kept(kind: str) -> None:
    events = (
        sse(chunk("hel"), done=False),
        ERROR_EVENTS[kind] + b"\n\n",
        sse(chunk(None, "stop"), USAGE_CHUNK),
    )
    w = world(Script([Scripted(events=events), Scripted(events=STREAM_EVENTS)]))
    _, second = await asked_twice(w, chat_body(stream=True))
    assert isinstance(second, EventStream) and len(w.upstream.requests) == 2  # none was kept
    w2 = world(Script([Scripted(events=events)]))
    sent = await drain(_stream(await w2.ask(chat_body(stream=True))))
    error = [e for e in sent.split(b"\n\n") if b'"error"' in e]
    assert len(error) == 1 and error[0].startswith(b'data: {"error":')
    assert orjson.loads(error[0][6:])["error"] == {
        "message": engine_failure_message(500),
        "type": "server_error",
        "param": None,
        "code": None,
    }  # fmt: skip  (a 5xx's own text is the engine operator's, never the client's)


async def test_a_stream_vllm_cut_off_is_relayed_and_not_kept() -> None:
    events = (sse(chunk("hel"), done=False), sse(chunk(None, "abort")))
    w = world(Script([Scripted(events=events), Scripted(events=STREAM_EVENTS)]))
    first, second = await asked_twice(w, chat_body(stream=True))
    assert isinstance(first, EventStream) and isinstance(second, EventStream)
    assert len(w.upstream.requests) == 2  # the cut-off answer was not kept
    third = await w.ask(chat_body(stream=True))
    assert isinstance(third, Replay)  # the whole one was
    w.assert_nothing_held()


async def test_a_delta_that_is_the_word_abort_is_text_and_kept() -> None:
    events = (sse(chunk("abort"), done=False), sse(chunk(None, "stop"), USAGE_CHUNK))
    w = world(Script([Scripted(events=events)]))
    _, second = await asked_twice(w, chat_body(stream=True))
    assert isinstance(second, Replay) and len(w.upstream.requests) == 1


async def test_a_delta_that_is_the_word_error_is_text() -> None:
    events = (
        sse(chunk("error"), done=False),
        sse(chunk('"error'), chunk(' "object": "error"'), done=False),
        sse(chunk(None, "stop"), USAGE_CHUNK),
    )
    w = world(Script([Scripted(events=events)]))
    _, second = await asked_twice(w, chat_body(stream=True))
    assert isinstance(second, Replay) and len(w.upstream.requests) == 1
    w2 = world(Script([Scripted(events=events)]))
    sent = await drain(_stream(await w2.ask(chat_body(stream=True))))
    assert sent == b"".join(events[:2]) + sse(chunk(None, "stop"))  # usage stripped only


def _stream(result: Result) -> EventStream:
    assert isinstance(result, EventStream)
    return result
