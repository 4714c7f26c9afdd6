"""The bare upstream: which requests get the fixed answer, which go through the stub's
planner, its errors, and answers kept in request order on a connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import orjson
import pytest

from benchmarks.bare_upstream import Answers, Connection, Counters, http_response, sse_chunk
from engines.stub.plan import Plan, StubConfig

MODEL = "stub-model"
CHAT = b"/v1/chat/completions"


def answers() -> tuple[Answers, Counters]:
    counters = Counters()
    return Answers(StubConfig(models=(MODEL,)), counters), counters


def body_of(reply: bytes | Plan) -> tuple[int, bytes]:
    assert isinstance(reply, bytes)
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert f"content-length: {len(body)}".encode() in head
    return status, body


def post(a: Answers, request: dict[str, object], path: bytes = CHAT) -> bytes | Plan:
    return a.answer(b"POST", path, orjson.dumps(request))


def test_a_plain_request_gets_the_same_fixed_answer_every_time() -> None:
    a, counters = answers()
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "one"}], "temperature": 0}
    first = post(a, ask)
    assert post(a, {**ask, "messages": [{"role": "user", "content": "two"}]}) is first
    status, body = body_of(first)
    answer = orjson.loads(body)
    assert status == 200 and answer["object"] == "chat.completion" and answer["model"] == MODEL
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] == 16  # the stub's default length
    assert counters.requests == 2


def test_completions_get_a_text_completion() -> None:
    a, _ = answers()
    status, body = body_of(post(a, {"model": MODEL, "prompt": "hi"}, b"/v1/completions"))
    assert status == 200 and orjson.loads(body)["object"] == "text_completion"


@pytest.mark.parametrize(
    "extra",
    [{"stream": True}, {"stub": {"tokens": 3}}, {"max_tokens": 2}, {"n": 2}, {"logprobs": True}],
)
def test_a_request_that_shapes_its_answer_is_planned_by_the_stub_planner(
    extra: dict[str, object],
) -> None:
    a, _ = answers()
    reply = post(a, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **extra})
    assert isinstance(reply, Plan)


def test_a_stream_plan_carries_the_stub_timing() -> None:
    a, _ = answers()
    stub = {"tokens": 5, "ttft_ms": 20, "itl_ms": 10}
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True,
           "stream_options": {"include_usage": True}, "stub": stub}  # fmt: skip
    plan = post(a, ask)
    assert isinstance(plan, Plan)
    assert (plan.stream, plan.completion_tokens, plan.ttft_s, plan.itl_s) == (
        True, 5, 0.02, 0.01)  # fmt: skip
    assert plan.include_usage


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"not json", 400),
        (orjson.dumps({"model": "other", "messages": [{"role": "user", "content": "x"}]}), 404),
        (orjson.dumps({"model": [MODEL], "messages": []}), 404),  # unhashable: no crash
        (orjson.dumps({"model": MODEL}), 400),  # no messages: the planner refuses it
        (orjson.dumps([1, 2]), 400),
        (orjson.dumps({"model": MODEL, "messages": [{"content": "x"}], "stub": {"fault": "drop"}}),
         400),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_errors(raw: bytes, status: int) -> None:
    a, _ = answers()
    got, body = body_of(a.answer(b"POST", CHAT, raw))
    assert got == status
    assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}


def test_what_a_gateway_asks_at_start_up_is_served() -> None:
    a, _ = answers()
    assert body_of(a.answer(b"GET", b"/health", b"")) == (200, b"")
    status, models = body_of(a.answer(b"GET", b"/v1/models?x=1", b""))
    assert status == 200 and [m["id"] for m in orjson.loads(models)["data"]] == [MODEL]
    status, metrics = body_of(a.answer(b"GET", b"/metrics", b""))
    assert status == 200 and b"vllm:num_requests_waiting" in metrics
    assert body_of(a.answer(b"GET", CHAT, b""))[0] == 404
    assert body_of(a.answer(b"POST", b"/v1/embeddings", b"{}"))[0] == 404
    assert body_of(a.answer(b"GET", b"/\xff\xfe", b""))[0] == 404  # not UTF-8: still an answer


def test_stats_count_completion_requests() -> None:
    a, _ = answers()
    post(a, {"model": MODEL, "prompt": "x"}, b"/v1/completions")
    status, body = body_of(a.answer(b"GET", b"/stub/stats", b""))
    stats = orjson.loads(body)
    assert status == 200 and stats["requests"] == 1 and stats["in_flight"] == 0


def test_chunks_and_responses_are_framed() -> None:
    assert sse_chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
    assert sse_chunk(b"") == b""  # an empty chunk would end the body
    assert http_response(404, None, b"").startswith(b"HTTP/1.1 404 Not Found\r\n")


@pytest.fixture
async def server() -> AsyncIterator[int]:
    counters = Counters()
    a = Answers(StubConfig(models=(MODEL,)), counters)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Connection(a, counters), "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


def request(body: Mapping[str, object], close: bool = False) -> bytes:
    raw = orjson.dumps(body)
    connection = b"connection: close\r\n" if close else b""
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n%scontent-length: %d\r\n\r\n%s"
            % (connection, len(raw), raw))  # fmt: skip


async def test_pipelined_answers_keep_request_order(server: int) -> None:
    """A slow stream first, then a fixed answer, in one write: the stream comes first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    stream = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True,
              "stream_options": {"include_usage": True},
              "stub": {"tokens": 3, "ttft_ms": 30, "itl_ms": 5}}  # fmt: skip
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "y"}]}
    writer.write(request(stream) + request(plain, close=True))
    data = await asyncio.wait_for(reader.read(-1), 10)  # the server closes after the second
    writer.close()
    done = data.index(b"data: [DONE]")
    assert data.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream")
    assert data.index(b"0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length:") > done
    assert data.count(b'"delta":{"content":') == 3
    assert b'"usage":{"prompt_tokens"' in data[:done]
    assert data.endswith(b'"completion_tokens":16}}')
