"""2xx answers that are no completion (hunt): HTML, bytes with no content type, an
empty 204 or a JSON string were relayed with their status, labelled
``application/json``, and the official SDK failed on them (or returned a ``str``). A
completion's 2xx answer must be a JSON object: anything else is a 502 in OpenAI's
shape, never cached; a 201 that is one is answered as it came."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.hostile_engine import ScriptedEngine
from tests.integration.conftest import Gateway, start_gateway

ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()  # fmt: skip


def _whole(status: bytes, content_type: bytes | None, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\n" % status
    if content_type is not None:
        head += b"content-type: %s\r\n" % content_type
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


ODD = {
    "html": _whole(b"200 OK", b"text/html", b"<html>please log in</html>"),
    "html_not_utf8": _whole(b"200 OK", b"text/html", b"<html>\xff\xfe</html>"),
    "no_content_type": _whole(b"200 OK", None, b"\xff\xfe garbage"),
    "empty_204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "json_string": _whole(b"200 OK", b"application/json", b'"just a string"'),
}


class Odd(ScriptedEngine):
    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(ODD.get(mode) or _whole(b"201 Created", b"application/json", ANSWER))
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def engine() -> Iterator[Odd]:
    with Odd() as made:
        yield made


@pytest.fixture(scope="module")
def gateway(engine: Odd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {"models": [{"name": "m", "endpoints": [engine.url]}],
              "cache": {"enabled": True, "deterministic_only": False},
              # each 502 counts against the engine; here it must stay in rotation
              "upstream": {"breaker_failures": 1000}}  # fmt: skip
    yield from start_gateway(config, tmp_path_factory.mktemp("odd"))


def _messages(mode: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"MODE:{mode} {uuid.uuid4().hex}"}]


@pytest.mark.parametrize("mode", list(ODD))
def test_a_2xx_that_is_no_json_object_is_a_502(gateway: Gateway, mode: str) -> None:
    body = {"model": "m", "messages": _messages(mode)}
    for _ in range(2):  # never cached: the second is the engine's again, a 502 again
        answer = httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=10)
        assert answer.status_code == 502, (answer.status_code, answer.content[:100])
        error = answer.json()["error"]
        assert error["code"] == "bad_gateway" and set(error) >= {"message", "type", "param"}
        assert answer.headers.get("x-cache", "").lower() != "hit"
    client = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="m", messages=_messages(mode))  # type: ignore[arg-type]
    assert raised.value.status_code == 502


def test_a_201_that_is_an_answer_is_relayed(gateway: Gateway) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0)
    answer = client.chat.completions.create(model="m", messages=_messages("ok"))  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "hello"
