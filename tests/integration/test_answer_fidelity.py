"""Answers exactly as the engine gave them (#15), through gateways with the official SDK
and a stub engine of their own: every field of an answer survives a cache hit (JSON and
stream, Redis and memory), vLLM's errors reach the SDK in OpenAI's shape (JSON and a
streamed error event), ``stream_options`` as vLLM reads it, the lenient schema, and
``/v1/embeddings`` through the pipeline (limits, cache)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = "sk-fidelity-0123456789"
TPM_KEY = "sk-fidelity-tpm-0123456789"
FIELDS = {"reasoning": "Let me think.", "system_fingerprint": "fp_stub", "stop_reason": 7}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


def config(engine: Stub, redis_url: str | None) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"f-{RUN}", "key": KEY},
                {"name": f"tpm-{RUN}", "key": TPM_KEY, "tpm": 100000},
            ],
        },
        "cache": {"enabled": True, "namespace": f"fid-{RUN}"},
    }
    if redis_url is not None:
        settings["redis"] = {"url": redis_url}
    return settings


@pytest.fixture(scope="module", params=["redis", "memory"])
def gateway(
    request: pytest.FixtureRequest,
    engine: Stub,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    url = redis_url if request.param == "redis" else None
    yield from start_gateway(config(engine, url), tmp_path_factory.mktemp(request.param))


def sdk(gateway: Gateway, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def calls(engine: Stub) -> int:
    return int(engine.stats()["requests"])


def rich(text: str, **extra: Any) -> dict[str, Any]:
    """A deterministic chat request whose answer carries every extra field vLLM sends."""
    return {
        "model": STUB_MODEL,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"{RUN} {text}"}],
        "tools": TOOLS,
        "tool_choice": "required",
        "logprobs": True,
        "extra_body": {"return_token_ids": True, "stub": {**FIELDS, "tokens": 4}},
        **extra,
    }


def without_id(data: bytes, answer_id: str) -> bytes:
    return data.replace(answer_id.encode(), b"<id>")


# -- every field survives a hit ----------------------------------------------------------


def test_a_json_hit_is_the_miss_byte_for_byte_but_its_id(gateway: Gateway, engine: Stub) -> None:
    client = sdk(gateway)
    before = calls(engine)
    miss = client.chat.completions.with_raw_response.create(**rich("json"))
    hit = client.chat.completions.with_raw_response.create(**rich("json"))
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert calls(engine) == before + 1
    first, second = miss.parse(), hit.parse()
    assert first.id != second.id and second.id.startswith("chatcmpl-")
    assert without_id(miss.content, first.id) == without_id(hit.content, second.id)
    message = second.choices[0].message
    assert message.model_extra is not None and message.model_extra["reasoning"] == "Let me think."
    assert message.tool_calls and message.tool_calls[0].function.name == "lookup"
    assert second.system_fingerprint == "fp_stub"
    assert second.choices[0].finish_reason == "tool_calls"
    extra = second.choices[0].model_extra or {}
    assert extra["stop_reason"] == 7 and len(extra["token_ids"]) == 4
    assert second.choices[0].logprobs is not None and second.choices[0].logprobs.content
    assert second.created == first.created


def stream_bytes(gateway: Gateway, body: dict[str, Any]) -> tuple[str, bytes]:
    """The X-Cache header and the raw SSE body of one streamed request."""
    payload = {k: v for k, v in body.items() if k != "extra_body"} | body.get("extra_body", {})
    with httpx.stream(
        "POST",
        f"{gateway.base_url}/chat/completions",
        json=payload | {"stream": True},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    ) as response:
        assert response.status_code == 200
        return response.headers["x-cache"], response.read()


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


def test_a_streamed_hit_is_the_miss_event_for_event_but_its_id(
    gateway: Gateway, engine: Stub
) -> None:
    before = calls(engine)
    body = rich("stream", stream_options={"include_usage": True})
    status, miss = stream_bytes(gateway, body)
    status_hit, hit = stream_bytes(gateway, body)
    assert (status, status_hit) == ("MISS", "HIT")
    assert calls(engine) == before + 1
    ids = [orjson.loads(events(raw)[0][6:])["id"] for raw in (miss, hit)]
    assert ids[0] != ids[1]
    assert [without_id(e, ids[0]) for e in events(miss)] == [
        without_id(e, ids[1]) for e in events(hit)
    ]
    text = hit.decode()
    for field in ('"reasoning":"Let ', '"tool_calls":[{"index":0,"id":', '"token_ids":[',
                  '"system_fingerprint":"fp_stub"', '"stop_reason":7', '"logprobs":{"content"',
                  '"usage":{'):  # fmt: skip
        assert field in text, field
    assert events(hit)[-1] == b"data: [DONE]"


def test_a_streamed_hit_drops_the_usage_event_unless_asked(gateway: Gateway) -> None:
    _, stored = stream_bytes(gateway, rich("usage", stream_options={"include_usage": True}))
    status, hit = stream_bytes(gateway, rich("usage"))
    assert status == "HIT"
    assert len(events(hit)) == len(events(stored)) - 1
    assert b'"usage"' in stored and b'"usage"' not in hit


def test_the_sdk_reads_a_streamed_hit_as_a_tool_call(gateway: Gateway) -> None:
    client = sdk(gateway)
    for _ in range(2):
        chunks = list(client.chat.completions.create(**rich("sdk stream"), stream=True))
        calls_ = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
        arguments = "".join(t[0].function.arguments or "" for t in calls_ if t and t[0].function)
        assert orjson.loads(arguments)["q"]


# -- vLLM's errors in OpenAI's shape ------------------------------------------------------

TOO_LONG = (
    "This model's maximum context length is 2048 tokens. However, your prompt contains "
    "4100 input tokens, which exceeds this limit even without any output tokens. "
    "Please reduce the length of the input prompt."
)


@pytest.mark.parametrize(("route", "param"), [("chat", "messages"), ("completions", "prompt")])
def test_an_over_long_prompt_is_context_length_exceeded(
    gateway: Gateway, route: str, param: str
) -> None:
    client = sdk(gateway)
    extra = {"stub": {"vllm_error": TOO_LONG}}
    with pytest.raises(openai.BadRequestError) as caught:
        if route == "chat":
            client.chat.completions.create(
                model=STUB_MODEL, messages=[{"role": "user", "content": "x"}], extra_body=extra
            )
        else:
            client.completions.create(model=STUB_MODEL, prompt="x", extra_body=extra)
    error = caught.value
    assert error.code == "context_length_exceeded"
    assert error.type == "invalid_request_error"
    assert error.param == param
    assert "maximum context length is 2048" in error.message


def test_other_engine_errors_get_openais_type_and_no_numeric_code(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(
            model=STUB_MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_body={"stub": {"vllm_error": "max_tokens must be at least 1, got 0."}},
        )
    assert caught.value.type == "invalid_request_error"
    assert caught.value.code is None
    assert "max_tokens must be at least 1" in caught.value.message


def test_a_streamed_engine_error_event_is_in_openais_shape(gateway: Gateway) -> None:
    stream = sdk(gateway).chat.completions.create(
        model=STUB_MODEL,
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_body={"stub": {"stream_error": TOO_LONG}},
    )
    with pytest.raises(openai.APIError) as caught:
        list(stream)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded" and body["type"] == "invalid_request_error"
    assert body["param"] == "messages"


# -- stream_options as vLLM 0.32 reads them ------------------------------------------------


@pytest.mark.parametrize(
    ("options", "usage"),
    [
        (None, False),
        ({}, False),  # vLLM: StreamOptions.include_usage defaults to False
        ({"include_usage": None}, False),
        ({"include_usage": False}, False),
        ({"continuous_usage_stats": True}, False),  # only with usage
        ({"include_usage": True}, True),  # "yes" is a 400: test_gaps_strict_booleans
    ],
)
def test_stream_options_follow_vllms_defaults(
    gateway: Gateway, options: dict[str, Any] | None, usage: bool
) -> None:
    body: dict[str, Any] = {
        "model": STUB_MODEL,
        "messages": [{"role": "user", "content": f"{RUN} options {options}"}],
        "stream": True,
        "temperature": 0.5,
    }
    if options is not None:
        body["stream_options"] = options
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body,
        headers={"Authorization": f"Bearer {TPM_KEY}"}, timeout=10,
    ) as response:  # fmt: skip
        raw = response.read()
    assert response.status_code == 200
    usage_events = [e for e in events(raw) if b'"usage"' in e]
    assert len(usage_events) == (1 if usage else 0)
    chunks = [e for e in events(raw) if b'"choices":[{' in e]
    assert all(b'"usage"' not in c for c in chunks)  # never usage in every chunk


# -- the schema accepts what vLLM accepts ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/completions", {"prompt": "hi", "max_tokens": 0, "echo": True}),
        ("/completions", {"prompt_embeds": "AAAA"}),
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "seed": 1.0}),
        ("/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2.0}),
    ],
)
def test_what_vllm_accepts_reaches_the_engine(
    gateway: Gateway, engine: Stub, path: str, body: dict[str, Any]
) -> None:
    before = calls(engine)
    response = httpx.post(
        f"{gateway.base_url}{path}",
        json={"model": STUB_MODEL} | body,
        headers={"Authorization": f"Bearer {TPM_KEY}", "Cache-Control": "no-store"},
        timeout=10,
    )
    assert calls(engine) == before + 1, response.text  # the engine judged it, not the gateway


def test_a_fractional_count_is_refused_naming_the_field(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(
            model=STUB_MODEL, messages=[{"role": "user", "content": "x"}], extra_body={"n": 1.5}
        )
    assert caught.value.param == "n"


def test_an_integral_float_n_is_reserved_as_an_integer(gateway: Gateway) -> None:
    """``n: 2.0`` reserves two choices' output, not one (the limits read the normalised body)."""
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": STUB_MODEL, "messages": [{"role": "user", "content": "n"}], "n": 2.0,
              "max_tokens": 50},
        headers={"Authorization": f"Bearer {TPM_KEY}", "Cache-Control": "no-store"},
        timeout=10,
    )  # fmt: skip
    assert response.status_code == 200
    assert len(response.json()["choices"]) == 2


# -- /v1/embeddings through the pipeline ------------------------------------------------------


def test_embeddings_two_inputs_two_vectors_cached_and_charged(
    gateway: Gateway, engine: Stub
) -> None:
    client = sdk(gateway, TPM_KEY)
    inputs = [f"{RUN} the cat sat on the mat", f"{RUN} a dog in the fog"]
    before = calls(engine)
    first = client.embeddings.with_raw_response.create(model=STUB_MODEL, input=inputs)
    answer = first.parse()
    assert len(answer.data) == 2 and all(len(d.embedding) == 384 for d in answer.data)
    assert answer.usage.prompt_tokens > 0
    assert first.headers["x-cache"] == "MISS"
    remaining = int(first.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= 100000 - answer.usage.total_tokens + 2 * 1  # charged to the key
    second = client.embeddings.with_raw_response.create(model=STUB_MODEL, input=inputs)
    assert second.headers["x-cache"] == "HIT"
    assert calls(engine) == before + 1  # the hit cost no engine work
    again = second.parse()
    assert [d.embedding for d in again.data] == [d.embedding for d in answer.data]
    assert (again.model_extra or {})["id"] != (answer.model_extra or {})["id"]


def test_embeddings_base64_and_dimensions_pass_through(gateway: Gateway) -> None:
    answer = sdk(gateway).embeddings.create(
        model=STUB_MODEL, input=f"{RUN} b64", dimensions=8, encoding_format="base64"
    )
    encoded = answer.data[0].embedding
    assert isinstance(encoded, str) and len(base64.b64decode(encoded)) == 8 * 4  # float32


def test_embeddings_are_refused_like_any_request(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=gateway.base_url, api_key="sk-nope", max_retries=0
        ).embeddings.create(model=STUB_MODEL, input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).embeddings.create(model=STUB_MODEL, input=[])
    assert caught.value.param == "input"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).embeddings.create(model="no-such-model", input="x")
    assert 'route="embeddings"' in gateway.metrics() or "embeddings" in gateway.metrics()
