"""The official OpenAI SDK against a real gateway (real redis-server, stub engine):
every answer validates, field by field, as the SDK's own type (``model_validate`` on
the wire JSON: the SDK itself constructs without validating, so a missing required
field would only show up as an AttributeError in an application), and every refusal
raises the SDK's exception class with the status, code, type, param and the headers
clients rely on. Also the SDK's retries given the gateway's retry hints, its timeouts
and a client leaving a stream early (the gateway frees the request)."""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai._models import FinalRequestOptions
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.helpers.metrics_text import metric_sum
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
RUN = uuid.uuid4().hex[:8]
OPEN_KEY = "sk-s13-open-0123456789"
RPM_KEY = "sk-s13-rpm-0123456789"
ONE_AT_A_TIME_KEY = "sk-s13-conc-0123456789"
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ITEM: TypeAdapter[Any] = TypeAdapter(ResponseItem)


@pytest.fixture(scope="module")
def keyed(
    stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway with keys in Redis-backed limits: one open key, one at 1 request/min,
    one with a single concurrent request."""
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"open-{RUN}", "key": OPEN_KEY},
                {"name": f"rpm-{RUN}", "key": RPM_KEY, "rpm": 1},
                {"name": f"conc-{RUN}", "key": ONE_AT_A_TIME_KEY, "max_concurrent": 1},
            ],
        },
        "upstream": {"read_timeout_s": 5, "retries": 0, "breaker_failures": 1000},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("s13"))


def sdk(gateway: Gateway, key: str = OPEN_KEY, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, **{"max_retries": 0, **kwargs})


def in_flight(gateway: Gateway) -> float:
    return metric_sum(gateway.metrics(), "vgate_requests_in_flight", model=STUB_MODEL)


# --- chat ---------------------------------------------------------------------------


def test_chat_answers_validate_with_n_logprobs_and_the_raw_headers(keyed: Gateway) -> None:
    raw = sdk(keyed).chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=MESSAGES, n=3, logprobs=True, top_logprobs=2, max_tokens=5
    )
    assert raw.status_code == 200 and raw.headers["x-request-id"]
    assert raw.headers["content-type"].startswith("application/json")
    completion = ChatCompletion.model_validate(raw.http_response.json())
    assert completion.object == "chat.completion"
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    for choice in completion.choices:
        assert choice.logprobs is not None and choice.logprobs.content
        assert choice.message.role == "assistant"
    assert raw.parse().id == completion.id


def test_chat_stream_chunks_validate_and_usage_comes_last(keyed: Gateway) -> None:
    with sdk(keyed).chat.completions.with_streaming_response.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        n=2,
        logprobs=True,
        stream_options={"include_usage": True},
        max_tokens=6,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        chunks = [
            ChatCompletionChunk.model_validate(chunk.model_dump()) for chunk in response.parse()
        ]
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 12
    assert all(chunk.usage is None for chunk in body)
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    finishes = {
        c.index: c.finish_reason for chunk in body for c in chunk.choices if c.finish_reason
    }
    assert finishes == {0: "length", 1: "length"}


def test_chat_stream_wire_chunks_validate(keyed: Gateway) -> None:
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "tool_choice": "required",
    }
    headers = {"authorization": f"Bearer {OPEN_KEY}"}
    with httpx.stream(
        "POST", f"{keyed.base_url}/chat/completions", json=body, headers=headers
    ) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    for line in lines[:-1]:
        ChatCompletionChunk.model_validate_json(line)


def test_chat_tools_and_json_schema_validate(keyed: Gateway) -> None:
    client = sdk(keyed)
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    raw = client.chat.completions.with_raw_response.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    completion = ChatCompletion.model_validate(raw.http_response.json())
    (call,) = completion.choices[0].message.tool_calls or []
    assert call.type == "function" and call.function.name == "lookup"
    assert completion.choices[0].finish_reason == "tool_calls"
    schema: Any = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True},
    }
    raw = client.chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=MESSAGES, response_format=schema
    )
    ChatCompletion.model_validate(raw.http_response.json())


# --- completions --------------------------------------------------------------------


def test_completions_validate_with_echo_suffix_n_and_best_of(keyed: Gateway) -> None:
    client = sdk(keyed)
    for kwargs in (
        {"echo": True},
        {"suffix": " end"},
        {"n": 2, "best_of": 3},
        {"logprobs": 2},
    ):
        raw = client.completions.with_raw_response.create(
            model=STUB_MODEL, prompt="Once", max_tokens=4, **kwargs
        )
        completion = Completion.model_validate(raw.http_response.json())
        assert completion.object == "text_completion"
        assert completion.choices and completion.usage is not None, kwargs
    stream = client.completions.create(
        model=STUB_MODEL,
        prompt="a b",
        n=2,
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk.model_dump() for chunk in stream]
    for chunk in chunks:
        for choice in chunk["choices"]:  # null until the last, as OpenAI streams it
            choice["finish_reason"] = choice["finish_reason"] or "stop"
        Completion.model_validate(chunk)
    assert chunks[-1]["usage"] is not None and chunks[-1]["choices"] == []
    assert {c["index"] for chunk in chunks for c in chunk["choices"]} == {0, 1}


# --- embeddings ---------------------------------------------------------------------


def test_embeddings_float_base64_lists_token_ids_and_dimensions(keyed: Gateway) -> None:
    client = sdk(keyed)
    for text_input in ("one", ["one", "two"], [1, 2, 3], [[1, 2], [3]]):
        for encoding in ("float", "base64"):
            raw = client.embeddings.with_raw_response.create(
                model=STUB_MODEL, input=text_input, encoding_format=encoding, dimensions=8
            )
            wire = raw.http_response.json()
            vectors = [item["embedding"] for item in wire["data"]]
            if encoding == "base64":  # the SDK types the vector it decodes, not the wire's
                wire["data"] = [{**item, "embedding": []} for item in wire["data"]]
            answer = CreateEmbeddingResponse.model_validate(wire)
            count = (
                len(text_input)
                if isinstance(text_input, list) and not isinstance(text_input[0], int)
                else 1
            )
            assert [item.index for item in answer.data] == list(range(count))
            for values in vectors:
                if encoding == "base64":
                    assert isinstance(values, str)
                    values = struct.unpack("<8f", base64.b64decode(values))
                assert len(values) == 8
    # the SDK's default asks for base64 and decodes it itself
    decoded = client.embeddings.create(model=STUB_MODEL, input="one", dimensions=8)
    assert len(decoded.data[0].embedding) == 8


# --- models -------------------------------------------------------------------------


def test_models_list_retrieve_and_unknown(keyed: Gateway) -> None:
    client = sdk(keyed)
    raw = client.models.with_raw_response.list()
    listed = raw.http_response.json()
    assert listed["object"] == "list"
    for item in listed["data"]:
        Model.model_validate(item)
    assert STUB_MODEL in {m.id for m in client.models.list()}
    got = client.models.with_raw_response.retrieve(STUB_MODEL)
    assert Model.model_validate(got.http_response.json()).id == STUB_MODEL
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.status_code == 404
    assert raised.value.code == "model_not_found"
    assert raised.value.request_id


# --- responses ----------------------------------------------------------------------


def response_of(wire: dict[str, Any]) -> Response:
    """``wire`` validated as the SDK's Response. The engine's usage (vLLM's, and the
    stub's after it) predates the SDK's required ``cache_write_tokens``: the gateway
    relays usage as the engine wrote it, so that one field is filled in here."""
    usage = wire.get("usage")
    if usage is not None:
        usage["input_tokens_details"].setdefault("cache_write_tokens", 0)
    return Response.model_validate(wire)


def test_responses_create_stream_retrieve_items_and_delete(keyed: Gateway) -> None:
    client = sdk(keyed)
    raw = client.responses.with_raw_response.create(
        model=STUB_MODEL,
        input=[{"role": "user", "content": f"m{i}"} for i in range(5)],
        max_output_tokens=3,
    )
    first = response_of(raw.http_response.json())
    assert first.object == "response" and first.status == "completed"
    with client.responses.with_streaming_response.create(
        model=STUB_MODEL, input="more", previous_response_id=first.id, stream=True
    ) as streaming:
        assert streaming.headers["content-type"].startswith("text/event-stream")
        lines = [line[6:] for line in streaming.iter_lines() if line.startswith("data: ")]
    events = [json.loads(line) for line in lines]
    *middle, last = events
    for event in middle:
        STREAM_EVENT.validate_python(event)
    second = response_of(last["response"])
    assert second.previous_response_id == first.id
    got = client.responses.with_raw_response.retrieve(second.id)
    response_of(got.http_response.json())
    page = client.responses.input_items.with_raw_response.list(first.id, limit=2, order="asc")
    listed = page.http_response.json()
    assert listed["object"] == "list" and listed["has_more"] is True
    assert listed["first_id"] == listed["data"][0]["id"]
    assert listed["last_id"] == listed["data"][-1]["id"]
    for item in listed["data"]:
        ITEM.validate_python(item)
    everything = list(client.responses.input_items.list(first.id, limit=2, order="asc"))
    assert len(everything) == 5
    after = list(client.responses.input_items.list(first.id, after=everything[1].id, order="asc"))
    assert [i.id for i in after] == [i.id for i in everything[2:]]
    desc = list(client.responses.input_items.list(first.id, order="desc"))
    assert [i.id for i in desc] == [i.id for i in reversed(everything)]
    deleted = client.responses.with_raw_response.delete(second.id)
    assert deleted.status_code == 200
    with pytest.raises(openai.NotFoundError) as raised:
        client.responses.retrieve(second.id)
    assert raised.value.request_id


# --- refusals, retries, timeouts, leaving early ------------------------------------


def test_over_rpm_with_options_max_retries_zero(keyed: Gateway) -> None:
    client = sdk(keyed, RPM_KEY, max_retries=2)
    client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, max_tokens=1)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as raised:
        client.with_options(max_retries=0).chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, max_tokens=1
        )
    assert time.monotonic() - started < 1.0
    error = raised.value
    assert (error.status_code, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    headers = error.response.headers
    assert headers["x-request-id"] and error.request_id == headers["x-request-id"]
    assert 0 < int(headers["retry-after"]) <= 61
    assert abs(int(headers["retry-after-ms"]) / 1000 - int(headers["retry-after"])) <= 1
    # what the SDK would wait with retries left: the gateway's hint to the millisecond
    options: Any = FinalRequestOptions.construct(method="post", url="/chat/completions")
    wait = client._calculate_retry_timeout(1, options, headers)
    assert wait == int(headers["retry-after-ms"]) / 1000


def test_stream_closed_early_frees_the_request(keyed: Gateway) -> None:
    client = sdk(keyed)
    stream = client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"tokens": 200, "itl_ms": 20}},
    )
    next(iter(stream))
    assert in_flight(keyed) == 1
    stream.close()
    holds_soon(lambda: in_flight(keyed) == 0, message="a closed stream stayed in flight")
    with client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"tokens": 200, "itl_ms": 20}},
    ) as managed:
        for chunk in managed:  # break inside the SDK's context manager, which closes
            assert chunk.id
            break
    holds_soon(lambda: in_flight(keyed) == 0, message="a stream left by break stayed in flight")


def test_client_timeout_raises_and_frees_the_request(keyed: Gateway) -> None:
    client = sdk(keyed, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, extra_body={"stub": {"ttft_ms": 3000}}
        )
    holds_soon(lambda: in_flight(keyed) == 0, message="a timed-out request stayed in flight")


def test_an_engines_503_is_retried_max_retries_times_with_the_sdks_backoff(
    keyed: Gateway, stub: Stub
) -> None:
    """No retry hint from the engine, none invented: the SDK backs off on its own
    (0.5 s then 1 s, less up to 25% jitter) and tries max_retries + 1 times in all."""
    client = sdk(keyed, max_retries=2)
    before = stub.stats()["requests"]
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(
            model=STUB_MODEL,
            messages=MESSAGES,
            extra_body={"stub": {"fault": "error", "status": 503}},
        )
    waited = time.monotonic() - started
    error = raised.value
    assert (error.status_code, error.code, error.type) == (503, "stub_fault", "server_error")
    assert error.request_id and "retry-after" not in error.response.headers
    assert stub.stats()["requests"] - before == 3
    assert 1.1 <= waited < 3.0


async def test_async_streams_left_early_free_their_requests(keyed: Gateway, stub: Stub) -> None:
    client = openai.AsyncOpenAI(base_url=keyed.base_url, api_key=OPEN_KEY, max_retries=0)
    slow: Any = {"stub": {"tokens": 200, "itl_ms": 20}}
    chat = await client.chat.completions.create(
        model=STUB_MODEL, messages=MESSAGES, stream=True, extra_body=slow
    )
    async for chunk in chat:
        assert chunk.object == "chat.completion.chunk"
        break
    await chat.close()
    text = await client.completions.create(
        model=STUB_MODEL, prompt="p", stream=True, max_tokens=200, extra_body=slow
    )
    async for part in text:
        assert part.object == "text_completion"
        break
    await text.close()
    await client.close()
    holds_soon(lambda: in_flight(keyed) == 0, message="a stream left early stayed in flight")
    holds_soon(lambda: stub.stats()["in_flight"] == 0, message="the engine still generates")


def test_a_method_a_route_lacks_is_405_saying_which_it_takes(keyed: Gateway) -> None:
    """RFC 9110: a 405 names the methods the resource supports in ``Allow``."""
    client = sdk(keyed)
    with pytest.raises(openai.APIStatusError) as raised:
        client.models.delete(STUB_MODEL)
    error = raised.value
    assert (error.status_code, error.code, error.type) == (
        405,
        "method_not_allowed",
        "invalid_request_error",
    )
    assert "GET" in error.response.headers["allow"].split(", ")
    with pytest.raises(openai.APIStatusError) as listing:
        client.chat.completions.list()
    assert listing.value.response.headers["allow"] == "POST"
    assert listing.value.request_id


@pytest.fixture(scope="module")
def caching(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"models": [{"name": STUB_MODEL, "endpoints": [stub.url]}], "cache": {"enabled": True}}
    yield from start_gateway(config, tmp_path_factory.mktemp("s13-cache"))


def test_cache_hits_validate_as_the_sdks_types(caching: Gateway) -> None:
    client = caching.client()
    asked: Any = {"model": STUB_MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": 4}
    answers = []
    for expected in ("MISS", "HIT"):
        raw = client.chat.completions.with_raw_response.create(**asked)
        assert raw.headers["x-cache"] == expected and raw.headers["x-request-id"]
        answers.append(ChatCompletion.model_validate(raw.http_response.json()))
    assert answers[0].choices[0].message.content == answers[1].choices[0].message.content
    for expected in ("MISS", "HIT"):
        with client.chat.completions.with_streaming_response.create(
            **asked, stream=True, stream_options={"include_usage": True}
        ) as response:
            assert response.headers["x-cache"] == expected
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        chunks = [ChatCompletionChunk.model_validate_json(line) for line in lines[:-1]]
        assert chunks[-1].usage is not None and chunks[-1].choices == []
    for expected in ("MISS", "HIT"):
        raw_text = client.completions.with_raw_response.create(
            model=STUB_MODEL, prompt="cached", temperature=0, max_tokens=3
        )
        assert raw_text.headers["x-cache"] == expected
        Completion.model_validate(raw_text.http_response.json())
    for expected in ("MISS", "HIT"):
        raw_vectors = client.embeddings.with_raw_response.create(
            model=STUB_MODEL, input=["a", "b"], encoding_format="float"
        )
        assert raw_vectors.headers["x-cache"] == expected
        CreateEmbeddingResponse.model_validate(raw_vectors.http_response.json())


def test_the_sdk_waits_the_concurrency_hint_and_then_gets_in(keyed: Gateway) -> None:
    client = sdk(keyed, ONE_AT_A_TIME_KEY, max_retries=3)
    holder = client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"tokens": 200, "itl_ms": 20}},
    )
    next(iter(holder))
    with pytest.raises(openai.RateLimitError) as raised:
        client.with_options(max_retries=0).chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, max_tokens=1
        )
    headers = raised.value.response.headers
    assert raised.value.code == "rate_limit_exceeded" and raised.value.type == "concurrency"
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1000")
    threading.Timer(0.3, holder.close).start()
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=MESSAGES, max_tokens=1
    )
    waited = time.monotonic() - started
    assert raw.retries_taken == 1 and 1.0 <= waited < 2.0
    assert raw.parse().choices[0].finish_reason == "length"


def test_a_stream_that_times_out_between_chunks_frees_the_request(keyed: Gateway) -> None:
    client = sdk(keyed, timeout=httpx.Timeout(5.0, read=0.5))
    stream = client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"tokens": 5, "itl_ms": 3000}},
    )
    with pytest.raises((httpx.ReadTimeout, openai.APITimeoutError)):
        for _ in stream:
            pass
    stream.close()
    holds_soon(lambda: in_flight(keyed) == 0, message="a timed-out stream stayed in flight")


def test_a_conversation_the_gateway_cannot_hold_is_refused_not_ignored(
    keyed: Gateway, stub: Stub
) -> None:
    """The gateway offers no Conversations API: an engine would ignore ``conversation``
    and answer without its items, silently."""
    before = stub.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk(keyed).responses.create(model=STUB_MODEL, input="and then?", conversation="conv_1")
    error = raised.value
    assert (error.code, error.param, error.type) == (
        "unsupported_parameter",
        "conversation",
        "invalid_request_error",
    )
    assert error.request_id and stub.stats()["requests"] == before


@pytest.fixture(scope="module")
def one_connection(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "server": {"max_connections": 1},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("s13-connections"))


def test_a_connection_over_the_cap_gets_a_503_the_sdk_can_name(one_connection: Gateway) -> None:
    holder = one_connection.client().chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"tokens": 200, "itl_ms": 20}},
    )
    next(iter(holder))
    other = one_connection.client()
    with pytest.raises(openai.InternalServerError) as raised:
        other.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    error = raised.value
    assert (error.status_code, error.code) == (503, "too_many_connections")
    headers = error.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1000")
    assert error.request_id and error.request_id.startswith("req_")
    with pytest.raises(openai.InternalServerError) as named:
        other.models.list(extra_headers={"x-request-id": "s13-over-cap"})
    assert named.value.request_id == "s13-over-cap"
    holder.close()


@pytest.fixture(scope="module")
def slow_responses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Stub]]:
    """A stub whose Responses streams take 5 s (its ``/v1/responses`` paces by its
    start-up flags only), behind a gateway of its own."""
    for stub in start_stub("--model", STUB_MODEL, "--itl-ms", "50", "--tokens", "100"):
        config = {"models": [{"name": STUB_MODEL, "endpoints": [stub.url]}]}
        for gateway in start_gateway(config, tmp_path_factory.mktemp("s13-slow")):
            yield gateway, stub


async def test_responses_streams_left_early_free_the_request_and_store_nothing(
    slow_responses: tuple[Gateway, Stub],
) -> None:
    gateway, stub = slow_responses
    client = gateway.client()
    left = []
    stream = client.responses.create(model=STUB_MODEL, input="i", stream=True)
    for event in stream:
        if event.type == "response.created":
            left.append(event.response.id)
        if event.type == "response.output_text.delta":
            break
    assert in_flight(gateway) == 1
    stream.close()
    holds_soon(lambda: in_flight(gateway) == 0, message="a closed stream stayed in flight")
    with client.responses.create(model=STUB_MODEL, input="i", stream=True) as managed:
        for event in managed:  # break inside the SDK's context manager: it closes
            if event.type == "response.created":
                left.append(event.response.id)
            if event.type == "response.output_text.delta":
                break
    holds_soon(lambda: in_flight(gateway) == 0, message="a stream left by break stayed")
    holds_soon(lambda: stub.stats()["streams_cancelled"] == 2, message="the engine streams on")
    async_client = gateway.async_client()
    chunks = await async_client.responses.create(model=STUB_MODEL, input="i", stream=True)
    async for event in chunks:
        if event.type == "response.created":
            left.append(event.response.id)
        if event.type == "response.output_text.delta":
            break
    await chunks.close()
    await async_client.close()
    holds_soon(lambda: stub.stats()["streams_cancelled"] == 3, message="the engine still streams")
    assert in_flight(gateway) == 0
    for response_id in left:  # an answer never finished is never stored
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response_id)


def test_every_way_a_client_leaves_gives_the_concurrency_slot_back(keyed: Gateway) -> None:
    """A key with one slot: after each way an SDK call can end (finished, closed early,
    broken off, timed out, an engine error, an error mid-stream), the next call gets in at
    once (no retries), so no path kept the slot."""
    client = sdk(keyed, ONE_AT_A_TIME_KEY)
    slow: Any = {"stub": {"tokens": 200, "itl_ms": 20}}

    def closed() -> None:
        stream = client.chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, stream=True, extra_body=slow
        )
        next(iter(stream))
        stream.close()

    def broken_off() -> None:
        with client.completions.create(
            model=STUB_MODEL, prompt="p", stream=True, max_tokens=200, extra_body=slow
        ) as stream:
            for chunk in stream:
                assert chunk.choices
                break

    def timed_out() -> None:
        with pytest.raises(openai.APITimeoutError):
            client.with_options(timeout=0.3).chat.completions.create(
                model=STUB_MODEL, messages=MESSAGES, extra_body={"stub": {"ttft_ms": 2000}}
            )

    def engine_error() -> None:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model=STUB_MODEL, messages=MESSAGES, extra_body={"stub": {"fault": "error"}}
            )

    def error_mid_stream() -> None:
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(
                model=STUB_MODEL,
                messages=MESSAGES,
                stream=True,
                extra_body={"stub": {"stream_error": "boom"}},
            ):
                pass

    def finished() -> None:
        client.embeddings.create(model=STUB_MODEL, input="x")

    for leave in (closed, broken_off, timed_out, engine_error, error_mid_stream, finished):
        leave()
        holds_soon(lambda: in_flight(keyed) == 0, message=f"{leave.__name__}: still in flight")
        holds_soon(lambda: _gets_in(client), message=f"{leave.__name__}: the slot was kept")


def _gets_in(client: openai.OpenAI) -> bool:
    try:
        client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, max_tokens=1)
    except openai.RateLimitError:
        return False
    return True
