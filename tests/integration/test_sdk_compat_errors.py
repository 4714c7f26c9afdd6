"""Errors as the OpenAI SDK sees them.

A request over ``server.max_prompt_chars`` is a ``BadRequestError`` whose ``param``
names the field that holds the text on that route (``messages``, ``prompt`` or
``input``, as for ``context_length_exceeded``), and nothing reaches the engine. (It
said ``messages`` on every route: a completions or embeddings client was pointed at a
field its request does not have.)

An engine behind a proxy that answers with the proxy's HTML error page, or a server
whose error is a bare ``{"message": ...}``, gives the SDK a readable message: the
page's title, the text (they were the whole page's markup, and the JSON object as
text)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from gateway.errors.engine_internals import engine_failure_message
from tests.helpers.hostile_engine import ScriptedEngine
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

LIMIT = 100
TEXT = "x" * (LIMIT + 1)


@pytest.fixture(scope="module")
def small_text_gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "server": {"max_prompt_chars": LIMIT},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("sdk-errors"))


CALLS: dict[str, Callable[[openai.OpenAI], Any]] = {
    "messages": lambda c: c.chat.completions.create(
        model=STUB_MODEL, messages=[{"role": "user", "content": TEXT}]
    ),
    "prompt": lambda c: c.completions.create(model=STUB_MODEL, prompt=[TEXT[:60], TEXT[60:]]),
    "input": lambda c: c.embeddings.create(model=STUB_MODEL, input=TEXT),
}


@pytest.mark.parametrize("field", list(CALLS))
def test_too_much_text_names_the_routes_own_field(
    small_text_gateway: Gateway, stub: Stub, field: str
) -> None:
    sent_before = stub.stats()["requests"]
    with pytest.raises(openai.BadRequestError) as raised:
        CALLS[field](small_text_gateway.client())
    assert raised.value.param == field
    assert f"exceeds {LIMIT} characters" in raised.value.message
    assert stub.stats()["requests"] == sent_before


NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
ERROR_PAGES = {
    "html": (502, "text/html", NGINX_502),
    "untitled": (503, "text/html", b"<!DOCTYPE html><html><body><p>down</p></body></html>"),
    "message": (400, "application/json", json.dumps({"message": "prompt is empty"}).encode()),
}


class ErrorPageEngine(ScriptedEngine):
    """Answers each chat request with the error page its mode names."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        status, content_type, body = ERROR_PAGES[mode]
        head = f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\n"
        writer.write(head.encode() + b"content-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def error_page_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with ErrorPageEngine() as engine:
        config = {
            "models": [{"name": engine.model, "endpoints": [engine.url]}],
            "upstream": {"retries": 0, "breaker_failures": 1000},
        }
        yield from start_gateway(config, tmp_path_factory.mktemp("error-pages"))


@pytest.mark.parametrize(
    ("mode", "error_class", "message"),
    [
        # a 5xx's own text (a proxy's page included) is the engine operator's, never shown
        ("html", openai.InternalServerError, engine_failure_message(502)),
        ("untitled", openai.InternalServerError, engine_failure_message(503)),
        ("message", openai.BadRequestError, "prompt is empty"),
    ],
)
def test_an_engines_error_page_reads_as_a_message(
    error_page_gateway: Gateway, mode: str, error_class: type[openai.APIStatusError], message: str
) -> None:
    with pytest.raises(error_class) as raised:
        error_page_gateway.client().chat.completions.create(
            model=ScriptedEngine.model, messages=[{"role": "user", "content": f"MODE:{mode}"}]
        )
    assert raised.value.message.endswith(f" - {message}")  # "Error code: 502 - ..."
    assert raised.value.body == {
        "message": message,
        "type": "server_error" if raised.value.status_code >= 500 else "invalid_request_error",
        "param": None,
        "code": None,
    }
