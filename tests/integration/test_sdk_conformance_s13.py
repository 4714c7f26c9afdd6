"""The official OpenAI SDK against a real gateway (real redis-server, stub engine):
every answer validates, field by field, as the SDK's own type (``model_validate`` on
the wire JSON: the SDK itself constructs without validating, so a missing required
field would only show up as an AttributeError in an application), streamed and not,
fresh and from the cache. Refusals and retries: ``test_sdk_conformance_s13_refusals``;
clients that leave: ``test_sdk_conformance_s13_leaving``."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway
from tests.integration.sdk_world import MESSAGES, OPEN_KEY, keyed_gateway, sdk

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ITEM: TypeAdapter[Any] = TypeAdapter(ResponseItem)


@pytest.fixture(scope="module")
def keyed(
    stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    yield from keyed_gateway(stub, redis_url, tmp_path_factory.mktemp("s13"))


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


# --- cache hits ---------------------------------------------------------------------


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
