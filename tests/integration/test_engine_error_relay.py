"""An engine's error answer through a whole gateway: what of it the client gets.

- An engine that answers 429 or 503 with ``Retry-After`` (vLLM behind its own limits,
  a loaded engine saying so) has it relayed, as delta-seconds written anew, so the
  OpenAI SDKs back off as long as the engine asked; an HTTP-date, a value out of range
  or junk is dropped, never relayed (both upstream clients, streams and whole answers).
  Before, every engine ``Retry-After`` was dropped. Its ``retry-after-ms`` (which the
  SDKs read first) is relayed alike, whole milliseconds up to an hour: an SDK client
  with one retry waits what the engine said in milliseconds, not the whole seconds of
  ``Retry-After``.
- The name an engine serves a model under (here a path, as ``upstream_model`` may be)
  never shows in its error messages, in whatever form the message has it: before, it
  was replaced only between backticks.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.errors.engine_internals import engine_failure_message
from tests.helpers.hostile_engine import ScriptedEngine
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

SERVED = "/models/internal-llama"
PUBLIC = "public-chat"

MODES: dict[str, tuple[bytes, bytes | None, str | None]] = {
    "r429": (b"429 Too Many Requests", b"7", "7"),
    "r503": (b"503 Service Unavailable", b" 30 ", "30"),
    "r429zero": (b"429 Too Many Requests", b"0", "0"),
    "r503date": (b"503 Service Unavailable", b"Wed, 21 Oct 2026 07:28:00 GMT", None),
    "r429junk": (b"429 Too Many Requests", b"7; evil=1", None),
    "r503far": (b"503 Service Unavailable", b"86400", None),
    "r429none": (b"429 Too Many Requests", None, None),
    "r400": (b"400 Bad Request", b"5", None),
}
"""Per mode: the engine's status line, its ``Retry-After`` and what the client gets."""

MS_MODES: dict[str, tuple[bytes, bytes, str | None]] = {
    "ms429": (b"429 Too Many Requests", b"250", "250"),
    "ms503": (b"503 Service Unavailable", b" 3600000 ", "3600000"),
    "ms429far": (b"429 Too Many Requests", b"3600001", None),
    "ms429frac": (b"429 Too Many Requests", b"2.5", None),
    "ms429junk": (b"429 Too Many Requests", b"7; evil=1", None),
    "ms400": (b"400 Bad Request", b"100", None),
}
"""Per mode: the status line, the engine's ``retry-after-ms`` (with ``Retry-After: 5``)
and the ``retry-after-ms`` the client gets."""


class RetryAfterEngine(ScriptedEngine):
    """Answers each request with the mode's error status and ``Retry-After``."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        retry_after_ms = None
        if mode in MS_MODES:
            status, retry_after_ms, _ = MS_MODES[mode]
            retry_after: bytes | None = b"5"
        else:
            status, retry_after, _ = MODES[mode]
        body = json.dumps(
            {"error": {"message": "busy", "type": "Busy", "param": None, "code": 429}}
        ).encode()
        head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n" % status
        if retry_after is not None:
            head += b"retry-after: %s\r\n" % retry_after
        if retry_after_ms is not None:
            head += b"retry-after-ms: %s\r\n" % retry_after_ms
        writer.write(head + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def engine() -> Iterator[RetryAfterEngine]:
    with RetryAfterEngine() as running:
        yield running


@pytest.fixture(scope="module")
def served_stub() -> Iterator[Stub]:
    yield from start_stub("--model", SERVED)


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest,
    engine: RetryAfterEngine,
    served_stub: Stub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [
            {"name": "busy", "endpoints": [engine.url]},
            {"name": PUBLIC, "endpoints": [served_stub.url], "upstream_model": SERVED},
            {"name": "public-missing", "endpoints": [served_stub.url], "upstream_model": "/m/x"},
        ],
        "upstream": {"client": request.param, "breaker_failures": 1000, "retries": 0},
    }
    directory: Path = tmp_path_factory.mktemp(f"relay-{request.param}")
    yield from start_gateway(config, directory)


def chat(gateway: Gateway, model: str, content: str, stream: bool, **extra: Any) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
        **extra,
    }
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=15)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", list(MODES))
def test_an_engines_retry_after_is_relayed_only_when_valid(
    gateway: Gateway, mode: str, stream: bool
) -> None:
    status, _, relayed = MODES[mode]
    reply = chat(gateway, "busy", f"MODE:{mode} {uuid.uuid4().hex}", stream)
    assert reply.status_code == int(status.split()[0]), reply.text[:300]
    assert reply.headers.get("retry-after") == relayed
    assert "evil" not in str(reply.headers).lower()
    code = int(status.split()[0])  # a 5xx's own text is the engine operator's, never shown
    assert reply.json()["error"]["message"] == (
        "busy" if code < 500 else engine_failure_message(code)
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", list(MS_MODES))
def test_an_engines_retry_after_ms_is_relayed_only_when_valid(
    gateway: Gateway, mode: str, stream: bool
) -> None:
    status, _, relayed = MS_MODES[mode]
    reply = chat(gateway, "busy", f"MODE:{mode} {uuid.uuid4().hex}", stream)
    assert reply.status_code == int(status.split()[0]), reply.text[:300]
    assert reply.headers.get("retry-after-ms") == relayed
    assert reply.headers.get("retry-after") == (None if status.startswith(b"400") else "5")
    assert "evil" not in str(reply.headers).lower()


def test_the_sdk_waits_the_relayed_milliseconds(gateway: Gateway, engine: RetryAfterEngine) -> None:
    """``retry-after-ms: 250`` beside ``Retry-After: 5``: the SDK's one retry comes after
    a quarter of a second, not five (it reads the milliseconds first)."""
    mode = f"MODE:ms429 {uuid.uuid4().hex}"
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=1)
    asked_before = engine.requests.count("ms429")
    began = time.monotonic()
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="busy", messages=[{"role": "user", "content": mode}])
    waited = time.monotonic() - began
    assert refused.value.response.headers["retry-after-ms"] == "250"
    assert engine.requests.count("ms429") == asked_before + 2  # asked, then once more
    assert 0.25 <= waited < 4.0, waited  # Retry-After alone: 5 s


FORMS = (
    f"The model `{SERVED}` is busy; '{SERVED}' said \"{SERVED}\" (model={SERVED}). "
    f"Loading {SERVED}: failed, see {SERVED}/config.json and {SERVED}."
)
"""A message naming the served name in backticks, quotes, parentheses, after ``=``,
before ``:``, ``/`` and a full stop."""


@pytest.mark.parametrize("stream", [False, True])
def test_the_served_name_never_shows_in_an_engines_error_message(
    gateway: Gateway, stream: bool
) -> None:
    reply = chat(gateway, PUBLIC, "x", stream, stub={"vllm_error": FORMS, "status": 400})
    assert reply.status_code == 400, reply.text[:300]
    message = reply.json()["error"]["message"]
    assert "internal-llama" not in message and "/models" not in message
    assert message == FORMS.replace(SERVED, PUBLIC)


def test_the_engines_own_model_not_found_names_the_clients_model(gateway: Gateway) -> None:
    reply = chat(gateway, "public-missing", "x", stream=False)
    assert reply.status_code == 404, reply.text[:300]
    error = reply.json()["error"]
    assert error["message"] == "The model `public-missing` does not exist."
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_the_served_name_never_shows_in_a_responses_error(gateway: Gateway, stream: bool) -> None:
    """The Responses API hides the engine-side names as chat does (it hid only the
    served name in backticks before)."""
    body = {"model": PUBLIC, "input": "x", "stream": stream, "store": False}
    body["stub"] = {"vllm_error": FORMS, "status": 400}
    reply = httpx.post(f"{gateway.url}/v1/responses", json=body, timeout=15)
    assert reply.status_code == 400, reply.text[:300]
    message = reply.json()["error"]["message"]
    assert "internal-llama" not in message and "/models" not in message
    assert message == FORMS.replace(SERVED, PUBLIC)
