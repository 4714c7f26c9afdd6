"""vLLM's model-scoped routes, model details and trailing slashes, through a real gateway
in front of stub engines (issue #15).

Each allowlisted route forwards by its ``model`` (the form field for audio) with auth,
the key's model list, its request rate and concurrency limits; every other vLLM route
is a 404 in OpenAI's format; ``/v1/models`` carries what the engines report; a path
with a trailing slash is served, never redirected.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionContentPartParam, ChatCompletionMessageParam

from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
BASE = "stub-model"
ADAPTER = "my-adapter"
HUB_ID = "org/hub-model"
ALIAS = "alias-model"
FULL_KEY = "sk-full-0123456789"
NARROW_KEY = "sk-narrow-0123456789"  # may use BASE only
RPM_KEY = "sk-rpm-0123456789"
CONC_KEY = "sk-conc-0123456789"

JSON_ROUTES: dict[str, dict[str, Any]] = {
    "/tokenize": {"prompt": "hello world"},
    "/detokenize": {"tokens": [104, 105]},
    "/v1/score": {"text_1": "a cat sat", "text_2": ["a cat sat", "dogs run"]},
    "/score": {"text_1": "a cat", "text_2": "a cat"},
    "/v1/rerank": {"query": "cat", "documents": ["dog", "cat"]},
    "/rerank": {"query": "cat", "documents": ["dog", "cat"]},
    "/v2/rerank": {"query": "cat", "documents": ["cat"]},
    "/pooling": {"input": "hello"},
    "/classify": {"input": ["good", "bad"]},
}
UNREACHABLE_VLLM_ROUTES = (
    ("POST", "/v1/load_lora_adapter"),
    ("POST", "/v1/unload_lora_adapter"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/sleep"),
    ("POST", "/wake_up"),
    ("POST", "/pause"),
    ("POST", "/collective_rpc"),
    ("POST", "/invocations"),
    ("POST", "/scale_elastic_ep"),
    ("GET", "/tokenizer_info"),
    ("GET", "/server_info"),
    ("POST", "/v1/embed"),
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", BASE, "--model", HUB_ID, "--lora", f"{ADAPTER}={BASE}")


@pytest.fixture(scope="module")
def gateway(engine: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    keys = [
        {"name": f"full-{RUN}", "key": FULL_KEY},
        {"name": f"narrow-{RUN}", "key": NARROW_KEY, "models": [BASE]},
        {"name": f"rpm-{RUN}", "key": RPM_KEY, "rpm": 2},
        {"name": f"conc-{RUN}", "key": CONC_KEY, "max_concurrent": 1},
    ]
    config = {
        "models": [
            {"name": BASE, "endpoints": [engine.url]},
            {"name": ADAPTER, "endpoints": [engine.url]},
            {"name": HUB_ID, "endpoints": [engine.url]},
            {"name": ALIAS, "endpoints": [engine.url], "upstream_model": BASE},
        ],
        "upstream": {"health_interval_s": 0.5},
        "auth": {"enabled": True, "keys": keys},
    }  # server.max_body_bytes keeps its default: the vision test depends on it
    yield from start_gateway(config, tmp_path_factory.mktemp("vllm-routes"))


def _post(gateway: Gateway, path: str, body: dict[str, Any], key: str = FULL_KEY) -> httpx.Response:
    return httpx.post(
        gateway.url + path,
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        follow_redirects=False,
        timeout=30,
    )


def _sdk(gateway: Gateway, key: str = FULL_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- the allowlisted routes ---------------------------------------------------------


@pytest.mark.parametrize("path", list(JSON_ROUTES))
def test_each_route_reaches_the_engine_of_its_model(
    gateway: Gateway, engine: Stub, path: str
) -> None:
    response = _post(gateway, path, {"model": BASE, **JSON_ROUTES[path]})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"]
    seen = engine.stats()["last_request"]
    assert seen["path"] == path
    assert seen["body"]["model"] == BASE
    assert "sk-" not in seen["headers"].get("authorization", "")  # the client's key stays here
    answer = response.json()
    if path == "/tokenize":
        assert answer == {
            "count": 11,
            "max_model_len": 4096,
            "tokens": list(b"hello world"),
            "token_strs": None,
        }
    elif path == "/detokenize":
        assert answer == {"prompt": "hi"}
    elif path.endswith("rerank"):
        assert answer["results"][0]["document"]["text"] == "cat"
        assert answer["model"] == BASE
    else:
        assert answer["object"] == "list" and answer["model"] == BASE and answer["data"]


def test_a_renamed_model_reaches_the_engine_under_its_served_name(
    gateway: Gateway, engine: Stub
) -> None:
    response = _post(gateway, "/v1/score", {"model": ALIAS, "text_1": "x y", "text_2": "x"})
    assert response.status_code == 200, response.text
    assert engine.stats()["last_request"]["body"]["model"] == BASE
    assert response.json()["model"] == ALIAS  # the client never sees the engine's name


def test_audio_routes_route_by_the_form_field(gateway: Gateway, engine: Stub) -> None:
    sdk = _sdk(gateway)
    audio = ("clip.wav", io.BytesIO(b"RIFF" + b"\0" * 1000), "audio/wav")
    transcript = sdk.audio.transcriptions.create(model=ALIAS, file=audio)
    assert transcript.text == "stub transcript of 1004 bytes"
    seen = engine.stats()["last_request"]
    assert seen["path"] == "/v1/audio/transcriptions"
    assert seen["body"]["model"] == BASE  # renamed inside the form
    assert seen["headers"]["content-type"].startswith("multipart/form-data; boundary=")
    translation = sdk.audio.translations.create(
        model=BASE, file=("c.wav", b"abc", "audio/wav"), response_format="text"
    )
    assert translation == "stub transcript of 3 bytes"
    assert engine.stats()["last_request"]["path"] == "/v1/audio/translations"


def test_hostile_or_incomplete_forms_are_refused(gateway: Gateway) -> None:
    url = gateway.url + "/v1/audio/transcriptions"
    auth = {"Authorization": f"Bearer {FULL_KEY}"}
    files = {"file": ("a.wav", b"abc", "audio/wav")}
    missing = httpx.post(url, headers=auth, files=files)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "model"
    boundary = "b0undary"
    twice = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{BASE}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nother\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert httpx.post(url, headers=headers, content=twice).status_code == 400
    unterminated = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{BASE}'
    assert httpx.post(url, headers=headers, content=unterminated.encode()).status_code == 400
    not_a_form = httpx.post(url, headers=auth, json={"model": BASE})
    assert not_a_form.status_code == 400
    assert not_a_form.json()["error"]["type"] == "invalid_request_error"


def test_auth_model_access_and_bad_models(gateway: Gateway) -> None:
    body = {"prompt": "hi"}
    nobody = httpx.post(gateway.url + "/tokenize", json={"model": BASE, **body})
    assert nobody.status_code == 401
    wrong = _post(gateway, "/tokenize", {"model": BASE, **body}, key="sk-wrong-0000000000")
    assert wrong.status_code == 401
    denied = _post(gateway, "/tokenize", {"model": ADAPTER, **body}, key=NARROW_KEY)
    assert denied.status_code == 404  # as if it did not exist
    assert denied.json()["error"]["code"] == "model_not_found"
    unknown = _post(gateway, "/tokenize", {"model": "nope", **body})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    for missing in ({}, {"model": 7}, {"model": ""}):
        refused = _post(gateway, "/tokenize", {**missing, **body})
        assert refused.status_code == 400, missing
        assert refused.json()["error"]["param"] == "model"
    not_json = httpx.post(
        gateway.url + "/tokenize", content=b"{", headers={"Authorization": f"Bearer {FULL_KEY}"}
    )
    assert not_json.status_code == 400


def test_engine_errors_come_back_in_openai_format(gateway: Gateway) -> None:
    response = _post(gateway, "/detokenize", {"model": BASE, "tokens": "not a list"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert "tokens" in error["message"]


@pytest.mark.parametrize(("method", "path"), UNREACHABLE_VLLM_ROUTES)
def test_other_vllm_routes_stay_unreachable(
    gateway: Gateway, engine: Stub, method: str, path: str
) -> None:
    engine.reset()
    response = httpx.request(
        method,
        gateway.url + path,
        json={"model": BASE},
        headers={"Authorization": f"Bearer {FULL_KEY}"},
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error" or response.json()["error"]
    assert engine.stats()["requests"] == 0


def test_the_request_rate_limit_applies(gateway: Gateway) -> None:
    body = {"model": BASE, "prompt": "hi"}
    assert [_post(gateway, "/tokenize", body, RPM_KEY).status_code for _ in range(2)] == [200, 200]
    refused = _post(gateway, "/v1/rerank", {**body, "query": "a", "documents": ["a"]}, RPM_KEY)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "requests"
    assert int(refused.headers["retry-after"]) >= 1


def test_the_concurrency_limit_applies(gateway: Gateway) -> None:
    sdk = _sdk(gateway, CONC_KEY)
    stream = sdk.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"stub": {"tokens": 100, "itl_ms": 20}},
    )
    chunks = iter(stream)
    next(chunks)  # the key's one slot is taken
    refused = _post(gateway, "/tokenize", {"model": BASE, "prompt": "hi"}, CONC_KEY)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "concurrency"
    assert sum(1 for _ in chunks) > 10
    tokenize = {"model": BASE, "prompt": "x"}
    _wait_for(lambda: _post(gateway, "/tokenize", tokenize, CONC_KEY).is_success)


# -- trailing slashes ---------------------------------------------------------------


def test_trailing_slashes_are_served_not_redirected(gateway: Gateway) -> None:
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    answered = _post(gateway, "/v1/chat/completions/", chat)
    assert answered.status_code == 200, answered.text
    assert answered.json()["object"] == "chat.completion"
    assert _post(gateway, "/v1/completions/", {"model": BASE, "prompt": "hi"}).status_code == 200
    assert _post(gateway, "/tokenize/", {"model": BASE, "prompt": "hi"}).status_code == 200
    auth = {"Authorization": f"Bearer {FULL_KEY}", "Host": "evil.example"}
    listed = httpx.get(gateway.url + "/v1/models/", headers=auth, follow_redirects=False)
    assert listed.status_code == 200 and listed.json()["object"] == "list"
    one = httpx.get(gateway.url + f"/v1/models/{BASE}/", headers=auth, follow_redirects=False)
    assert one.status_code == 200 and one.json()["id"] == BASE
    assert "location" not in one.headers
    sdk = openai.OpenAI(base_url=gateway.base_url + "/", api_key=FULL_KEY, max_retries=0)
    assert sdk.chat.completions.create(**chat).choices[0].message.content  # type: ignore[call-overload]


# -- models ---------------------------------------------------------------------------


def test_models_carry_what_the_engines_report(gateway: Gateway) -> None:
    def cards() -> dict[str, dict[str, Any]]:
        listed = _sdk(gateway).models.list()
        return {m.id: m.model_dump() for m in listed.data}

    _wait_for(lambda: all("max_model_len" in card for card in cards().values()))
    listed = cards()
    assert set(listed) == {BASE, ADAPTER, HUB_ID, ALIAS}
    assert listed[BASE]["max_model_len"] == 4096
    assert listed[BASE]["root"] == BASE and listed[BASE]["parent"] is None
    assert listed[ADAPTER]["parent"] == BASE
    assert listed[ADAPTER]["root"] == ADAPTER  # not the adapter's directory on the engine
    assert listed[ALIAS]["root"] == ALIAS  # the engine's name for it never shows
    assert listed[ALIAS]["owned_by"] == "vgate"


def test_model_details_with_the_sdk(gateway: Gateway) -> None:
    sdk = _sdk(gateway)
    model = sdk.models.retrieve(BASE)
    assert (model.id, model.object, model.owned_by) == (BASE, "model", "vgate")
    assert isinstance(model.created, int)
    assert sdk.models.retrieve(HUB_ID).id == HUB_ID  # an id with a slash
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("nope")
    assert caught.value.code == "model_not_found"
    # A model the key may not use is as absent as one that does not exist.
    narrow = _sdk(gateway, NARROW_KEY)
    assert narrow.models.retrieve(BASE).id == BASE
    with pytest.raises(openai.NotFoundError) as hidden:
        narrow.models.retrieve(ADAPTER)
    assert hidden.value.code == "model_not_found"
    assert [m.id for m in narrow.models.list().data] == [BASE]
    with pytest.raises(openai.AuthenticationError):
        _sdk(gateway, "sk-wrong-0000000000").models.retrieve(BASE)


# -- the body limit -----------------------------------------------------------------


def test_a_vision_request_with_a_10_mb_image_reaches_the_engine(
    gateway: Gateway, engine: Stub
) -> None:
    image = "A" * (10 * 1024 * 1024 * 4 // 3)  # a 10 MiB image, base64-encoded (~14 MB)
    content: list[ChatCompletionContentPartParam] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{image}"}},
    ]
    answer = _sdk(gateway).chat.completions.create(
        model=BASE, messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content
    seen = engine.stats()["last_request"]
    assert seen["path"] == "/v1/chat/completions"
    assert len(seen["body"]["messages"][0]["content"][1]["image_url"]["url"]) > 13_900_000


def test_bodies_held_at_once_are_bounded_per_worker(engine: Stub, tmp_path: Any) -> None:
    """With a 2 MiB budget, a 1.5 MB request whose answer is still streaming holds its
    bytes: a second one is refused (503, Retry-After) until the first has ended."""
    budget = 2 * 1024 * 1024
    config = {
        "models": [{"name": BASE, "endpoints": [engine.url]}],
        "server": {"max_body_bytes": budget, "max_body_bytes_in_flight": budget},
    }
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * 1_500_000}]
    for gateway in start_gateway(config, tmp_path):
        sdk = openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0)
        stream = sdk.chat.completions.create(
            model=BASE, messages=big, stream=True, extra_body={"stub": {"tokens": 60, "itl_ms": 20}}
        )
        chunks = iter(stream)
        next(chunks)
        with pytest.raises(openai.InternalServerError) as refused:
            sdk.chat.completions.create(model=BASE, messages=big)
        assert refused.value.status_code == 503
        assert refused.value.response.headers["retry-after"] == "1"
        assert refused.value.code == "request_bytes_in_flight"
        small = sdk.chat.completions.create(
            model=BASE, messages=[{"role": "user", "content": "hi"}]
        )
        assert small.choices[0].message.content  # small bodies are not held back
        assert sum(1 for _ in chunks) > 10
        answer = sdk.chat.completions.create(model=BASE, messages=big)
        assert answer.choices[0].message.content
