"""The stub engine on a real port, driven by the official OpenAI SDK, httpx and raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Stub

SECOND_MODEL = "second-model"
MESSAGES: list[Any] = [{"role": "user", "content": "Say something about gateways."}]


@contextlib.contextmanager
def running_stub(*flags: str) -> Iterator[Stub]:
    """A stub engine process started with ``flags``, stopped on exit."""
    port = free_port()
    argv = [sys.executable, "-m", "engines.stub", "--port", str(port), *flags]
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30):
        yield Stub(f"http://127.0.0.1:{port}")


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    """One stub for this module, serving two models; tests reset its counters."""
    with running_stub("--model", STUB_MODEL, "--model", SECOND_MODEL) as stub:
        yield stub


@pytest.fixture
def client(engine: Stub) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)


def wait_for(predicate: Callable[[], bool], timeout: float = 1.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def chat_text(client: openai.OpenAI, content: str, **kwargs: Any) -> str:
    reply = client.chat.completions.create(
        model=STUB_MODEL, messages=[{"role": "user", "content": content}], **kwargs
    )
    return reply.choices[0].message.content or ""


# --- answers ---------------------------------------------------------------------------


def test_chat_completion_shape_and_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == STUB_MODEL
    (choice,) = reply.choices
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert len((choice.message.content or "").split()) == 16
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(MESSAGES[0]["content"].split()) + 4
    assert reply.usage.completion_tokens == 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 16


def test_text_completion_shape_and_usage(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=STUB_MODEL, prompt="Once upon a time", max_tokens=99)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    (choice,) = reply.choices
    assert choice.finish_reason == "stop"
    assert len(choice.text.split()) == 16
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (4, 16)


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    whole = chat_text(client, MESSAGES[0]["content"])
    chunks = list(
        client.chat.completions.create(
            model=STUB_MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    first, *middle, finish, usage = chunks
    assert first.object == "chat.completion.chunk"
    assert (first.choices[0].delta.role, first.choices[0].delta.content) == ("assistant", "")
    assert len(middle) == 16
    assert all(chunk.choices[0].finish_reason is None for chunk in middle)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in middle) == whole
    assert finish.choices[0].finish_reason == "stop"
    assert finish.choices[0].delta.content is None
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.completion_tokens == 16
    assert usage.usage.prompt_tokens == len(MESSAGES[0]["content"].split()) + 4
    assert len({chunk.id for chunk in chunks}) == 1


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_text_completion_stream_matches_whole_answer(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=STUB_MODEL, prompt="stream me", max_tokens=5)
    chunks = list(
        client.completions.create(
            model=STUB_MODEL,
            prompt="stream me",
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert "".join(texts) == whole.choices[0].text
    assert len([text for text in texts if text]) == 5
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_sse_framing_on_the_wire(engine: Stub) -> None:
    body = {"model": STUB_MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 3}
    with httpx.stream("POST", f"{engine.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")[:-1]
    assert len(events) == 1 + 3 + 1 + 1  # role, tokens, finish, [DONE]
    assert all(event.startswith("data: ") for event in events)
    for event in events[:-1]:
        assert orjson.loads(event.removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_answers_are_deterministic_per_prompt(client: openai.OpenAI) -> None:
    first = chat_text(client, "What is a gateway?")
    again = chat_text(client, "What is a gateway?")
    other = chat_text(client, "What is a load balancer?")
    assert first == again
    assert first != other


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_caps_answer_with_length_reason(
    client: openai.OpenAI, limit_field: str
) -> None:
    limit: dict[str, Any] = {limit_field: 3}
    reply = client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, **limit)
    assert reply.choices[0].finish_reason == "length"
    assert len((reply.choices[0].message.content or "").split()) == 3
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3


def test_n_gives_distinct_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, n=3)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in reply.choices}) == 3
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 3 * 16


def test_stub_tokens_override(client: openai.OpenAI) -> None:
    text = chat_text(client, "short please", extra_body={"stub": {"tokens": 2}})
    assert len(text.split()) == 2


def test_models_list(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == [STUB_MODEL, SECOND_MODEL]


def test_second_model_answers_under_its_name(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=SECOND_MODEL, messages=MESSAGES)
    assert reply.model == SECOND_MODEL


# --- errors ----------------------------------------------------------------------------


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("method", "path", "content", "status"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 404),
        ("POST", "/v1/completions", b'{"prompt": "no model"}', 404),
        ("GET", "/v1/nothing-here", b"", 404),
        ("GET", "/v1/chat/completions", b"", 405),
        ("DELETE", "/v1/models", b"", 405),
    ],
)
def test_http_errors_have_openai_shape(
    engine: Stub, method: str, path: str, content: bytes, status: int
) -> None:
    response = httpx.request(method, f"{engine.url}{path}", content=content)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_injected_error_status(
    client: openai.OpenAI, status: int, error_class: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(
            model=STUB_MODEL,
            messages=MESSAGES,
            extra_body={"stub": {"fault": "error", "status": status}},
        )
    assert caught.value.status_code == status
    assert caught.value.code == "stub_fault"


# --- faults and disconnects ----------------------------------------------------------


def test_drop_breaks_the_sdk_stream(client: openai.OpenAI, engine: Stub) -> None:
    engine.reset()
    stream = client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"fault": "drop", "after": 3}},
    )
    pieces: list[str] = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        pieces.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert len([piece for piece in pieces if piece]) == 3
    stats = engine.stats()
    assert (stats["streams_dropped"], stats["streams_completed"]) == (1, 0)


def test_drop_leaves_chunked_body_unterminated(engine: Stub) -> None:
    body = orjson.dumps(
        {
            "model": STUB_MODEL,
            "messages": MESSAGES,
            "stream": True,
            "stub": {"fault": "drop", "after": 1},
        }
    )
    raw = raw_exchange(engine, b"POST", b"/v1/chat/completions", body)
    assert b"transfer-encoding: chunked" in raw.lower()
    assert b'"content":' in raw
    assert b"[DONE]" not in raw
    assert not raw.endswith(b"0\r\n\r\n")


def test_drop_without_stream_cuts_the_body(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, extra_body={"stub": {"fault": "drop"}}
        )


def test_hang_times_out_and_counts_as_cancelled(client: openai.OpenAI, engine: Stub) -> None:
    engine.reset()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, extra_body={"stub": {"fault": "hang"}}
        )
    assert wait_for(lambda: engine.stats()["requests_cancelled"] == 1)
    assert engine.stats()["in_flight"] == 0


def test_stream_hangs_after_chunks(engine: Stub) -> None:
    engine.reset()
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"fault": "hang", "after": 2},
    }
    events: list[str] = []
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST", f"{engine.url}/v1/chat/completions", json=body, timeout=0.5
        ) as response,
    ):
        events.extend(line for line in response.iter_lines() if line)
    assert len(events) == 3  # the role chunk and two content chunks
    assert wait_for(lambda: engine.stats()["streams_cancelled"] == 1)


def test_closing_a_slow_stream_is_noticed_within_a_second(engine: Stub) -> None:
    engine.reset()
    body = {
        "model": STUB_MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stub": {"tokens": 100, "itl_ms": 300},
    }
    with httpx.stream("POST", f"{engine.url}/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert engine.stats()["in_flight"] == 1
    assert wait_for(lambda: engine.stats()["streams_cancelled"] == 1, timeout=1.0)
    stats = engine.stats()
    assert (stats["streams_started"], stats["streams_completed"], stats["in_flight"]) == (1, 0, 0)


async def test_running_gauge_follows_a_hanging_request(engine: Stub) -> None:
    running = 'vllm:num_requests_running{model_name="stub-model"}'
    body = {"model": STUB_MODEL, "messages": MESSAGES, "stub": {"fault": "hang"}}
    async with httpx.AsyncClient(base_url=engine.url, timeout=5.0) as http:
        request = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        assert await async_wait_for(lambda: f"{running} 1.0" in metrics_text(engine))
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
    assert await async_wait_for(lambda: f"{running} 0.0" in metrics_text(engine))
    assert engine.stats()["in_flight"] == 0


async def test_chunks_arrive_spread_over_time(engine: Stub) -> None:
    client = openai.AsyncOpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    stream = await client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        stream=True,
        extra_body={"stub": {"tokens": 6, "ttft_ms": 150, "itl_ms": 50}},
    )
    arrivals = [time.monotonic() async for chunk in stream if chunk.choices[0].delta.content]
    await client.close()
    assert len(arrivals) == 6
    assert arrivals[0] - started >= 0.14
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert arrivals[-1] - arrivals[0] >= 0.2  # five 50 ms gaps, not one burst at the end
    assert sum(gap >= 0.03 for gap in gaps) >= 3  # a busy client may read two at once


# --- control and housekeeping --------------------------------------------------------


def test_last_request_shows_forwarded_fields(client: openai.OpenAI, engine: Stub) -> None:
    client.chat.completions.create(
        model=STUB_MODEL,
        messages=MESSAGES,
        extra_body={"vendor_field": {"keep": [1, 2]}},
        extra_headers={"X-Trace-Id": "trace-7"},
    )
    last = engine.stats()["last_request"]
    assert last["path"] == "/v1/chat/completions"
    assert last["body"]["vendor_field"] == {"keep": [1, 2]}
    assert last["headers"]["x-trace-id"] == "trace-7"


def test_reset_zeroes_counters(client: openai.OpenAI, engine: Stub) -> None:
    chat_text(client, "count me")
    assert engine.stats()["requests"] >= 1
    engine.reset()
    stats = engine.stats()
    assert stats["requests"] == 0
    assert stats["last_request"] is None


def test_health_and_metrics(engine: Stub) -> None:
    health = httpx.get(f"{engine.url}/health")
    assert (health.status_code, health.content) == (200, b"")
    text = metrics_text(engine)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        for model in (STUB_MODEL, SECOND_MODEL):
            assert f'vllm:{name}{{model_name="{model}"}} 0.0' in text


def test_keep_alive_serves_requests_on_one_connection(engine: Stub) -> None:
    body = orjson.dumps({"model": STUB_MODEL, "prompt": "keep alive"})
    with socket.create_connection(("127.0.0.1", port_of(engine)), timeout=5) as sock:
        for _ in range(3):
            sock.sendall(http_request(b"POST", b"/v1/completions", body))
            status, payload = read_response(sock)
            assert status == 200
            assert orjson.loads(payload)["object"] == "text_completion"


# --- start-up flags -------------------------------------------------------------------


def test_flags_fail_status_and_models() -> None:
    with running_stub("--model", "m-one", "--model", "m-two", "--fail-status", "503") as stub:
        client = openai.OpenAI(base_url=f"{stub.url}/v1", api_key="unused", max_retries=0)
        assert [model.id for model in client.models.list()] == ["m-one", "m-two"]
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model="m-one", prompt="hello")
        assert caught.value.status_code == 503


def test_flags_tokens_delay_and_drop_after() -> None:
    with running_stub("--tokens", "4", "--ttft-ms", "100", "--drop-after", "2") as stub:
        client = openai.OpenAI(base_url=f"{stub.url}/v1", api_key="unused", max_retries=0)
        started = time.monotonic()
        assert len(chat_text(client, "four words").split()) == 4
        assert time.monotonic() - started >= 0.09
        stream = client.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, stream=True)
        pieces: list[str] = []
        with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
            pieces.extend(chunk.choices[0].delta.content or "" for chunk in stream)
        assert len([piece for piece in pieces if piece]) == 2


# --- helpers ---------------------------------------------------------------------------


def metrics_text(engine: Stub) -> str:
    return httpx.get(f"{engine.url}/metrics").text


async def async_wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    """`wait_for` that lets the event loop run between polls."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def port_of(engine: Stub) -> int:
    return int(engine.url.rsplit(":", 1)[1])


def http_request(method: bytes, path: bytes, body: bytes) -> bytes:
    return (
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nhost: stub\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One ``content-length`` response from ``sock``: status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
    length = int(headers[b"content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(lines[0].split()[1]), rest[:length]


def raw_exchange(engine: Stub, method: bytes, path: bytes, body: bytes) -> bytes:
    """Send one request on a fresh socket; everything received until the server closes it."""
    with socket.create_connection(("127.0.0.1", port_of(engine)), timeout=5) as sock:
        sock.sendall(http_request(method, path, body))
        received = b""
        while data := sock.recv(65536):
            received += data
        return received
