"""The official OpenAI SDK's view of the gateway's refusals: the exception class, the
status, code, type and param, ``request_id`` and the retry hints, and how long the
SDK waits given them (its retries on a 429 and an engine's 503)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai._models import FinalRequestOptions

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway
from tests.integration.sdk_world import (
    MESSAGES,
    ONE_AT_A_TIME_KEY,
    RPM_KEY,
    keyed_gateway,
    sdk,
)


@pytest.fixture(scope="module")
def keyed(
    stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    yield from keyed_gateway(stub, redis_url, tmp_path_factory.mktemp("s13"))


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
