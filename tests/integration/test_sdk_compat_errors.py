"""Errors as the OpenAI SDK sees them: a request over ``server.max_prompt_chars`` is a
``BadRequestError`` whose ``param`` names the field that holds the text on that route
(``messages``, ``prompt`` or ``input``, as for ``context_length_exceeded``), and
nothing reaches the engine. (It said ``messages`` on every route: a completions or
embeddings client was pointed at a field its request does not have.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

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
