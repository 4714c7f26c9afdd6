"""A stream's head and first event wait by ``ttft_s`` when it is set, even when it is
longer than ``read_timeout_s`` (the longest gap between chunks), as the README says;
later gaps still wait by ``read_timeout_s``. Before, both clients waited for the head
and the first read by ``read_timeout_s`` alone, so a ``ttft_timeout_s`` above it never
took effect (the stream got a 504 at the read timeout). Both upstream clients."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
READ_S, TTFT_S = 0.5, 3.0


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest, stub: Stub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "upstream": {
            "client": request.param,
            "breaker_failures": 1000,
            "read_timeout_s": READ_S,
            "ttft_timeout_s": TTFT_S,
        },
    }
    yield from start_gateway(config, tmp_path_factory.mktemp(f"first-{request.param}"))


def stream(gateway: Gateway, stub: dict[str, float]) -> Any:
    return gateway.client().chat.completions.create(
        model=STUB_MODEL, messages=MESSAGES, stream=True, extra_body={"stub": stub}
    )


def test_a_first_event_later_than_the_read_timeout_but_within_ttft_is_served(
    gateway: Gateway,
) -> None:
    chunks = list(stream(gateway, {"ttft_ms": 1500, "itl_ms": 10, "tokens": 3}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text  # every token arrived: no 504 at read_timeout_s


def test_a_gap_after_the_first_event_still_waits_by_the_read_timeout(gateway: Gateway) -> None:
    with pytest.raises(openai.APIError) as caught:
        list(stream(gateway, {"ttft_ms": 10, "itl_ms": 2000, "tokens": 3}))
    assert "for longer than 0.5 s (upstream.read_timeout_s)" in str(caught.value)


def test_a_first_event_past_ttft_is_a_504_naming_it(gateway: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        list(stream(gateway, {"ttft_ms": 5000}))
    assert caught.value.status_code == 504
    message = caught.value.response.json()["error"]["message"]
    assert "within 3 s (upstream.ttft_timeout_s)" in message
