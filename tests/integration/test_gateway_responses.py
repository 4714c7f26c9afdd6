"""The Responses API through real gateways: two stub engines (which, like vLLM without
its store, refuse any ``previous_response_id``), two gateway processes sharing one
redis-server, and the official SDK. A follow-up made through the other gateway and
answered by the other engine still continues the conversation, because the gateway
stores responses in Redis and sends the engine the whole conversation."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY_A, KEY_B, KEY_T = "sk-resp-a-0123456789", "sk-resp-b-0123456789", "sk-resp-t-0123456789"
TPM = 100_000


def _config(engines: list[str], redis_url: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": engines}],
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"a-{RUN}", "key": KEY_A},
                {"name": f"b-{RUN}", "key": KEY_B},
                {"name": f"t-{RUN}", "key": KEY_T, "tpm": TPM},
            ],
        },
        "routing": {"policy": "round_robin"},
        "upstream": {"health_interval_s": 0.5},
    }
    if redis_url is not None:
        config["redis"] = {"url": redis_url}
    return config


@pytest.fixture(scope="module")
def engines() -> Iterator[list[Stub]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                contextlib.contextmanager(start_stub)("--model", STUB_MODEL, "--itl-ms", "30")
            )
            for _ in range(2)
        ]


@pytest.fixture(scope="module")
def gateways(
    engines: list[Stub], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gateway]]:
    """Gateway 0 routes to engine 0 only, gateway 1 to engine 1 only: a follow-up made
    through the other gateway is answered by the other engine."""
    directory = tmp_path_factory.mktemp("responses")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                contextlib.contextmanager(start_gateway)(_config([e.url], redis_url), directory)
            )
            for e in engines
        ]


def _client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def _text(response: Any) -> str:
    return str(response.output_text)


def test_create_follow_up_on_another_gateway_and_engine(
    gateways: list[Gateway], engines: list[Stub]
) -> None:
    first = _client(gateways[0], KEY_A).responses.create(model=STUB_MODEL, input="Hello there")
    assert first.id.startswith("resp_")
    assert first.status == "completed"
    assert _text(first).startswith("items=1")
    assert first.usage is not None and first.usage.total_tokens > 0
    assert engines[0].stats()["last_request"]["body"]["store"] is False

    second = _client(gateways[1], KEY_A).responses.create(
        model=STUB_MODEL, input="And again?", previous_response_id=first.id
    )
    # The other engine got the whole conversation: user, assistant, user.
    assert _text(second).startswith("items=3")
    assert second.previous_response_id == first.id
    sent = engines[1].stats()["last_request"]["body"]
    assert "previous_response_id" not in sent
    assert [item.get("role") for item in sent["input"]] == ["user", "assistant", "user"]
    assert sent["input"][1]["content"][0]["text"] == _text(first)

    # Retrieval and input items through the other gateway.
    again = _client(gateways[0], KEY_A).responses.retrieve(second.id)
    assert again.id == second.id and _text(again) == _text(second)
    items = _client(gateways[0], KEY_A).responses.input_items.list(second.id, order="asc")
    assert [item.type for item in items.data] == ["message"] * 3
    assert items.has_more is False
    raw = httpx.get(
        f"{gateways[1].base_url}/responses/{second.id}/input_items",
        headers={"Authorization": f"Bearer {KEY_A}"},
    ).json()
    assert raw["object"] == "list" and raw["first_id"] == items.data[-1].id
    assert raw["last_id"] == items.data[0].id  # desc by default
    page = _client(gateways[1], KEY_A).responses.input_items.list(second.id, limit=1)
    assert page.has_more is True and getattr(page.data[0], "role", None) == "user"  # newest first
    rest = _client(gateways[1], KEY_A).responses.input_items.list(
        second.id, limit=5, after=page.data[0].id
    )
    assert [item.id for item in rest.data] == [i.id for i in reversed(items.data)][1:]


def test_stream_events_arrive_one_by_one_and_are_stored(
    gateways: list[Gateway], engines: list[Stub]
) -> None:
    client = _client(gateways[0], KEY_A)
    arrivals: list[tuple[str, float]] = []
    with client.responses.create(model=STUB_MODEL, input="Stream it", stream=True) as stream:
        for event in stream:
            arrivals.append((event.type, time.monotonic()))
            if event.type == "response.completed":
                completed = event.response
    kinds = [kind for kind, _ in arrivals]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    deltas = [at for kind, at in arrivals if kind == "response.output_text.delta"]
    assert len(deltas) == 16
    # Not buffered: the first delta reached the client well before the last was made
    # (the stub waits 30 ms between deltas: 450 ms from first to last; a buffered
    # stream arrives within a millisecond. On a loaded machine the client reads late
    # and sees bursts: 137 ms was seen, so the bound leaves room).
    assert deltas[-1] - deltas[0] > 0.05
    follow = _client(gateways[1], KEY_A).responses.create(
        model=STUB_MODEL, input="more", previous_response_id=completed.id, stream=True
    )
    texts = [e.delta for e in follow if e.type == "response.output_text.delta"]
    assert texts[0] == "items=3"
    retrieved = _client(gateways[1], KEY_A).responses.retrieve(completed.id)
    assert _text(retrieved) == completed.output_text


def test_another_key_sees_nothing(gateways: list[Gateway]) -> None:
    mine = _client(gateways[0], KEY_A).responses.create(model=STUB_MODEL, input="secret")
    other = _client(gateways[1], KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(mine.id)
    with pytest.raises(openai.NotFoundError) as error:
        other.responses.create(model=STUB_MODEL, input="x", previous_response_id=mine.id)
    assert error.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError):
        _client(gateways[0], KEY_A).responses.retrieve("resp_does_not_exist")


def test_cancel_delete_and_store_false(gateways: list[Gateway]) -> None:
    client = _client(gateways[0], KEY_A)
    made = client.responses.create(model=STUB_MODEL, input="hi")
    with pytest.raises(openai.BadRequestError) as error:
        client.responses.cancel(made.id)
    assert error.value.message.endswith("Cannot cancel a synchronous response.")
    client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(made.id)
    unstored = client.responses.create(model=STUB_MODEL, input="hi", store=False)
    assert _text(unstored).startswith("items=1")
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_bad_input_is_an_openai_400(gateways: list[Gateway]) -> None:
    url = f"{gateways[0].base_url}/responses"
    headers = {"Authorization": f"Bearer {KEY_A}"}
    cases = [
        ({"input": "hi"}, "model"),
        ({"model": STUB_MODEL}, "input"),
        ({"model": 3, "input": "hi"}, "model"),
        ({"model": STUB_MODEL, "input": [1, 2]}, "input"),
        ({"model": STUB_MODEL, "input": "hi", "background": True}, "background"),
        ({"model": STUB_MODEL, "input": "hi", "max_output_tokens": "9"}, "max_output_tokens"),
    ]
    for body, param in cases:
        reply = httpx.post(url, json=body, headers=headers)
        assert reply.status_code == 400, body
        assert reply.json()["error"]["param"] == param
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url, content=b"[", headers=headers).status_code == 400
    assert httpx.post(url, json={"model": STUB_MODEL, "input": "x"}).status_code == 401
    for n in range(5):  # made-up models: 404s that leave no metric series of their own
        made_up = httpx.post(url, json={"model": f"made-up-{n}", "input": "x"}, headers=headers)
        assert made_up.status_code == 404
    assert "made-up-" not in gateways[0].metrics()
    made = _client(gateways[0], KEY_A).responses.create(model=STUB_MODEL, input="again?")
    with pytest.raises(openai.BadRequestError) as caught:  # was an empty stream, silently
        _client(gateways[0], KEY_A).responses.retrieve(made.id, stream=True)
    assert caught.value.response.json()["error"]["param"] == "stream"


def test_usage_is_charged_to_tpm(gateways: list[Gateway], engines: list[Stub]) -> None:
    reply = httpx.post(
        f"{gateways[0].base_url}/responses",
        json={"model": STUB_MODEL, "input": "count me", "max_output_tokens": 50},
        headers={"Authorization": f"Bearer {KEY_T}"},
    )
    assert reply.status_code == 200
    # The engine may generate no more than what was reserved (the cap reached it) ...
    assert engines[0].stats()["last_request"]["body"]["max_output_tokens"] == 50
    used = reply.json()["usage"]["total_tokens"]
    after = httpx.post(
        f"{gateways[0].base_url}/responses",
        json={"model": STUB_MODEL, "input": "count me", "max_output_tokens": 50},
        headers={"Authorization": f"Bearer {KEY_T}"},
    )
    # ... and what was charged is the first answer's usage, not its reservation.
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert TPM - used - 50 - 10 <= remaining <= TPM - used


def test_memory_store_without_redis(engines: list[Stub], tmp_path: Path) -> None:
    config = _config([engines[0].url], None)
    with contextlib.contextmanager(start_gateway)(config, tmp_path) as gateway:
        client = _client(gateway, KEY_A)
        first = client.responses.create(model=STUB_MODEL, input="Hello")
        second = client.responses.create(
            model=STUB_MODEL, input="Again", previous_response_id=first.id
        )
        assert _text(second).startswith("items=3")
        assert client.responses.retrieve(second.id).id == second.id


def test_a_key_at_its_stored_bytes_quota_gets_429_until_it_deletes(
    engines: list[Stub], redis_url: str, tmp_path: Path
) -> None:
    """One tenant cannot fill the shared Redis with stored responses: past
    ``responses.max_bytes_per_key`` a request that would store is refused before the
    engine sees it (``store: false`` still works, other keys are unaffected), and
    deleting a stored response makes room again."""
    config = _config([engines[0].url], redis_url)
    config["responses"] = {"max_bytes_per_key": 4096}
    quota_key = "sk-resp-q-0123456789"  # a key of its own: the others stored before
    config["auth"]["keys"].append({"name": f"q-{uuid.uuid4().hex[:8]}", "key": quota_key})
    with contextlib.contextmanager(start_gateway)(config, tmp_path) as gateway:
        client = _client(gateway, quota_key)
        stored: list[str] = []
        with pytest.raises(openai.RateLimitError) as refused:
            for n in range(50):
                stored.append(client.responses.create(model=STUB_MODEL, input=f"fill {n}").id)
        assert 2 <= len(stored) < 50
        error = refused.value.response.json()["error"]
        assert (error["type"], error["code"], error["param"]) == (
            "insufficient_quota", "insufficient_quota", "store",
        )  # fmt: skip
        assert "max_bytes_per_key" in error["message"]
        assert refused.value.response.headers["x-should-retry"] == "false"
        unstored = client.responses.create(model=STUB_MODEL, input="no store", store=False)
        assert unstored.output_text
        assert _client(gateway, KEY_B).responses.create(model=STUB_MODEL, input="b").id
        client.responses.delete(stored[0])
        again = client.responses.create(model=STUB_MODEL, input="room again")
        assert client.responses.retrieve(again.id).id == again.id


def _nested(lists: int) -> Any:
    value: Any = "x"
    for _ in range(lists):
        value = [value]
    return value


def test_a_body_at_the_accepted_depth_is_answered_and_not_stored(
    gateways: list[Gateway],
) -> None:
    """Hunt: the stub (like vLLM) copies ``tools`` into its response, and the stored
    record nests it one level deeper than JSON may go: encoding it raised after the
    engine had answered (a 500; a stream cut with no error event: the stub cannot
    stream an event that deep). Now the answer arrives and the record is skipped."""
    url = f"{gateways[0].base_url}/responses"
    headers = {"Authorization": f"Bearer {KEY_A}"}
    body = {"model": STUB_MODEL, "input": "hi", "tools": [_nested(252)]}  # 254 deep
    reply = httpx.post(url, json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "completed"
    missing = httpx.get(f"{url}/{reply.json()['id']}", headers=headers)
    assert missing.status_code == 404
