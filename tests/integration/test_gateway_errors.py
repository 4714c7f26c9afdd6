"""Every error the gateway reports: status, OpenAI error body, and the SDK's exception class;
and hostile request content (odd types, numbers, nesting, bytes, headers) answered with a
400 in OpenAI's form or served, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


def test_unknown_model_is_404_not_found(gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    error = _error(caught.value)
    assert caught.value.status_code == 404
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"


def test_malformed_json_is_400(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=b'{"model": "stub-model", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"stream": "yes"}, "stream"),
        ({"messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
    ],
)
def test_wrong_types_are_400_naming_the_field(
    gateway: Gateway, fields: dict[str, Any], param: str
) -> None:
    body = {"model": STUB_MODEL, "messages": MESSAGES} | fields
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().chat.completions.create(**body)
    error = _error(caught.value)
    assert error["param"] == param
    assert param in error["message"]


def test_missing_prompt_is_400(gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.client().completions.create(model=STUB_MODEL, prompt=None)
    assert _error(caught.value)["param"] == "prompt"


def test_body_over_the_limit_is_413(gateway: Gateway) -> None:
    huge: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * (80 * 1024)}]
    with pytest.raises(openai.APIStatusError) as caught:
        gateway.client().chat.completions.create(model=STUB_MODEL, messages=huge)
    assert caught.value.status_code == 413
    assert _error(caught.value)["code"] == "request_too_large"


def test_chunked_body_over_the_limit_is_413(gateway: Gateway) -> None:
    def chunks() -> Any:
        yield b'{"model": "stub-model", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}]}'

    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunks())
    assert response.status_code == 413


def test_no_reachable_engine_is_503(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(model="dead-model", messages=MESSAGES)
    assert caught.value.status_code == 503
    assert _error(caught.value)["code"] == "engine_unavailable"


def test_upstream_timeout_is_504(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, extra_body={"stub": {"fault": "hang"}}
        )
    assert caught.value.status_code == 504
    assert _error(caught.value)["code"] == "upstream_timeout"


def test_streaming_upstream_timeout_before_first_byte_is_504(gateway: Gateway) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        gateway.client().chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, stream=True, extra_body={"stub": {"fault": "hang"}}
        )
    assert caught.value.status_code == 504


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (400, openai.BadRequestError),
        (422, openai.UnprocessableEntityError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_error_status_passes_through_with_its_body(
    gateway: Gateway, status: int, exception: type[openai.APIStatusError], stream: bool
) -> None:
    fault = {"stub": {"fault": "error", "status": status}}
    direct = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": STUB_MODEL, "messages": MESSAGES, "stream": stream} | fault,
    )
    assert direct.status_code == status
    with pytest.raises(exception) as caught:
        gateway.client().chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, stream=stream, extra_body=fault
        )
    assert caught.value.status_code == status
    assert caught.value.response.json() == direct.json()


def test_engine_dropping_mid_stream_ends_with_error_event_and_done(gateway: Gateway) -> None:
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"fault": "drop", "after": 3},
    }
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2]
    assert len(events) >= 5  # role chunk, three content chunks, error, [DONE]


def test_sdk_raises_on_mid_stream_failure(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"fault": "drop", "after": 2}},
    )
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert len(received) >= 2


def test_engine_stalling_mid_stream_times_out_with_error_event(gateway: Gateway) -> None:
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"fault": "hang", "after": 2},
    }
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, timeout=10
    ) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert "upstream_timeout" in events[-2]


def test_unknown_route_and_wrong_method(gateway: Gateway) -> None:
    missing = httpx.post(f"{gateway.url}/v1/tokenize", json={})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- hostile request content


@pytest.fixture(scope="module")
def hostile(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The features that read request content on: prefix affinity and the cache."""
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [stub.url]},
            {"name": "alias-model", "endpoints": [stub.url], "upstream_model": STUB_MODEL},
            {"name": "hidden-alias", "endpoints": [stub.url], "upstream_model": SERVED},
        ],
        "routing": {"policy": "prefix_affinity", "prefix_chars": 16},
        "cache": {"enabled": True},
        "server": {"max_body_bytes": 64 * 1024},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("hostile"))


CHAT_PATH = "/v1/chat/completions"
SERVED = "internal-served-v7"  # a name the stub does not serve: it answers 404


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True}),
        ("/v1/responses", {"input": "x"}),
        ("/v1/responses", {"input": "x", "stream": True}),
        ("/tokenize", {"prompt": "x"}),
    ],
)
def test_an_engine_error_shows_the_clients_model_name_never_the_served_one(
    hostile: Gateway, path: str, body: dict[str, Any]
) -> None:
    reply = post(hostile, path, orjson.dumps({"model": "hidden-alias"} | body))
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert "`hidden-alias`" in error["message"] and SERVED not in reply.text


@pytest.mark.parametrize(("path", "param"), [("/v1/responses", "input"), (CHAT_PATH, "messages")])
def test_a_context_length_error_names_the_routes_prompt_field(
    hostile: Gateway, path: str, param: str
) -> None:
    too_long = "This model's maximum context length is 8 tokens. However, you requested 9."
    body: dict[str, Any] = {"model": STUB_MODEL, "stub": {"vllm_error": too_long}}
    body |= {"input": "x"} if path == "/v1/responses" else {"messages": MESSAGES}
    reply = post(hostile, path, orjson.dumps(body))
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("context_length_exceeded", param)


CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
HELLO = b'{"model":"stub-model","messages":[{"role":"user","content":"hello"}]'


def post(gateway: Gateway, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}{path}", content=body, headers=headers, timeout=10)


def chat(**fields: Any) -> bytes:
    return orjson.dumps({"model": STUB_MODEL, "messages": MESSAGES, "temperature": 0} | fields)


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": 5}],
        [{"type": "text", "text": {"nested": ["object"]}}, {"type": "text", "text": "hi"}],
        [{"type": "text", "text": None}],
    ],
)
def test_non_string_text_parts_under_prefix_affinity_are_answered(
    hostile: Gateway, content: Any
) -> None:
    body = orjson.dumps({"model": STUB_MODEL, "messages": [{"role": "user", "content": content}]})
    assert post(hostile, CHAT_URL, body).status_code == 200


@pytest.mark.parametrize("depth", [300, 1000, 1022])
@pytest.mark.parametrize("path", [CHAT_URL, COMPLETIONS_URL])
def test_deeply_nested_json_is_400(hostile: Gateway, depth: int, path: str) -> None:
    body = HELLO + b',"prompt":"x","x":' + b"[" * depth + b"]" * depth + b"}"
    response = post(hostile, path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "nested more than 254 levels" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (HELLO + b',"x":NaN}', None),
        (HELLO + b',"temperature":Infinity}', None),
        (HELLO + b',"x":1e400}', None),
        (HELLO + b',"x":"\\ud800"}', None),
        (HELLO + b',"x":"\xff"}', None),
        (b"\xef\xbb\xbf" + HELLO + b"}", None),
        (HELLO + b',"model":5}', "model"),  # duplicate keys: the last one counts
        (chat(n=-1), "n"),
        (chat(n=0), "n"),
        (chat(best_of=0), "best_of"),
        (chat(max_tokens=-1), "max_tokens"),
        (chat(n=1.5), "n"),
        (chat(max_tokens=1e23), "max_tokens"),
        (chat(seed=2**64 - 1), "seed"),
        (chat(stream_options="yes"), "stream_options"),
        (chat(stream_options={"include_usage": "maybe"}), "stream_options.include_usage"),
        (chat(user=5), "user"),
        (chat(model=["stub-model"]), "model"),
        (chat(messages="hello"), "messages"),
        (chat(messages=[5]), "messages[0]"),
        (orjson.dumps({"model": STUB_MODEL, "prompt": []}), "prompt"),
        (orjson.dumps({"model": STUB_MODEL, "prompt": [[]]}), "prompt"),
        (orjson.dumps({"model": STUB_MODEL, "prompt": [1, "a"]}), "prompt"),
    ],
)
def test_hostile_bodies_are_400_in_openai_form(
    hostile: Gateway, body: bytes, param: str | None
) -> None:
    path = COMPLETIONS_URL if b'"prompt"' in body else CHAT_URL
    response = post(hostile, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        chat(extension=1e300),  # cached: the key must not choke on it
        chat()[:-1] + b',"extension":99999999999999999999999,"x":[-9223372036854775808]}',
        chat(logit_bias={"50256": -100}),
        chat(logit_bias={"x": [1, {"y": None}]}),
        chat(seed=-(2**63)),
        chat(stop=[""]),
        chat(messages=[{"role": "user", "content": "\u0000\ufeff\U0010ffff"}]),
        orjson.dumps({"model": STUB_MODEL, "prompt": [1, 2, 3], "temperature": 0}),
        orjson.dumps({"model": "alias-model", "prompt": "x", "stream": True}),
    ],
)
def test_odd_but_valid_bodies_are_answered(hostile: Gateway, body: bytes) -> None:
    path = COMPLETIONS_URL if b'"prompt"' in body else CHAT_URL
    for _ in range(2):  # a miss, then (where cacheable) a hit
        response = post(hostile, path, body)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "headers",
    [
        {"cache-control": "max-age=nan"},
        {"cache-control": "max-age=1e999, no-cache"},
        {"cache-control": "max-age=-5"},
        {"cache-control": "max-age=" + "9" * 2000},
        {"cache-control": ",,,="},
        {"x-session-id": "\xff\xfe"},
        {"x-session-id": ""},
        {"x-request-id": "\xe9t\xe9"},
        {"content-type": "text/plain"},
        {"content-type": "multipart/form-data; boundary=x"},
    ],
)
def test_odd_headers_are_answered(hostile: Gateway, headers: dict[str, str]) -> None:
    encoded = {name.encode(): value.encode("latin-1") for name, value in headers.items()}
    response = httpx.post(f"{hostile.url}{CHAT_URL}", content=chat(), headers=encoded, timeout=10)
    assert response.status_code == 200, response.text
