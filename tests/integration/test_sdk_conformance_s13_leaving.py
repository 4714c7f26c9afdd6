"""An SDK client that leaves before the answer ends (closes a stream, breaks off,
times out, gets an error): the gateway frees the request (in-flight gauge, the
engine's stream cancelled, the key's concurrency slot) and stores nothing unfinished."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub
from tests.integration.sdk_world import (
    MESSAGES,
    ONE_AT_A_TIME_KEY,
    OPEN_KEY,
    in_flight,
    keyed_gateway,
    sdk,
)


@pytest.fixture(scope="module")
def keyed(
    stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    yield from keyed_gateway(stub, redis_url, tmp_path_factory.mktemp("s13"))


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
