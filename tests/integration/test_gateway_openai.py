"""The OpenAI SDK, sync and async, through a real gateway to a real stub engine."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway, Stub

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me about the gateway."}
]


def test_sync_chat_matches_the_engine(gateway: Gateway, stub: Stub) -> None:
    via_gateway = gateway.client().chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    direct = openai.OpenAI(base_url=f"{stub.url}/v1", api_key="x").chat.completions.create(
        model=STUB_MODEL, messages=MESSAGES
    )
    assert via_gateway.choices[0].message.content == direct.choices[0].message.content
    assert via_gateway.choices[0].message.content
    assert via_gateway.usage is not None
    assert via_gateway.usage.completion_tokens == direct.usage.completion_tokens  # type: ignore[union-attr]


async def test_async_chat_and_stream(gateway: Gateway) -> None:
    client = gateway.async_client()
    whole = await client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    stream = await client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    await client.close()


def test_stream_with_usage(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=5,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing[-1].choices[0].finish_reason == "length"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None and usage.completion_tokens == 5
    assert usage.total_tokens == usage.prompt_tokens + 5


def test_stream_without_usage_has_no_usage_chunk(gateway: Gateway) -> None:
    chunks = list(
        gateway.client().chat.completions.create(model=STUB_MODEL, messages=MESSAGES, stream=True)
    )
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions_plain_and_streamed(gateway: Gateway) -> None:
    client = gateway.client()
    whole = client.completions.create(model=STUB_MODEL, prompt="Once upon a time", max_tokens=7)
    assert whole.choices[0].finish_reason == "length"
    streamed = client.completions.create(
        model=STUB_MODEL, prompt="Once upon a time", max_tokens=7, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text


def test_models_lists_the_configured_models(gateway: Gateway) -> None:
    listed = gateway.client().models.list()
    assert {m.id for m in listed.data} == {STUB_MODEL, "dead-model", "alias-model"}
    assert all(m.object == "model" for m in listed.data)


def test_alias_model_is_sent_under_its_served_name(gateway: Gateway, stub: Stub) -> None:
    reply = gateway.client().chat.completions.create(model="alias-model", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert stub.stats()["last_request"]["body"]["model"] == STUB_MODEL
    assert reply.model == "alias-model"  # the client never sees the engine-side name


def test_alias_model_streams_under_the_clients_name(gateway: Gateway, stub: Stub) -> None:
    chat = gateway.client().chat.completions.create(
        model="alias-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(chat)
    assert stub.stats()["last_request"]["body"]["model"] == STUB_MODEL
    assert len(chunks) > 2
    assert {c.model for c in chunks} == {"alias-model"}
    assert chunks[-1].usage is not None
    legacy = gateway.client().completions.create(model="alias-model", prompt="Hi", stream=True)
    assert {c.model for c in legacy} == {"alias-model"}


def test_unknown_sampling_fields_reach_the_engine_and_the_request_id_is_echoed_not_forwarded(
    gateway: Gateway, stub: Stub
) -> None:
    """The client's ``x-request-id`` comes back to it; the engine gets the gateway's own
    (vLLM takes that header as its request id: two tenants must not be able to collide)."""
    extra = {"top_k": 5, "min_p": 0.1, "ignore_eos": True, "repetition_penalty": 1.1}
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        extra_body=extra,
        extra_headers={"x-request-id": "trace-123"},
    )
    assert raw.headers["x-request-id"] == "trace-123"
    seen = stub.stats()["last_request"]
    assert {k: seen["body"][k] for k in extra} == extra
    assert seen["headers"]["x-request-id"].startswith("vgate-")


def test_request_id_is_generated_when_absent(gateway: Gateway) -> None:
    ids = {httpx.get(f"{gateway.url}/health").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert all(i.startswith("req_") for i in ids)


def test_health_and_ready(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.url}/health").status_code == 200
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}  # the public port: ready or not, no more
    engines = gateway.ready()["engines"]  # the detail, on the operator listener
    assert next(iter(engines["dead-model"].values())) is False
    assert next(iter(engines[STUB_MODEL].values())) is True


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_engine_fields_need_a_model(gateway: Gateway, path: str) -> None:
    response = httpx.post(
        f"{gateway.url}{path}", json={"model": "nope", "prompt": "x", "messages": MESSAGES}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
