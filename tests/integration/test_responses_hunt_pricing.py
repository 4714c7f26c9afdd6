"""Hunt on the Responses API through a real gateway and stub engine: what a hostile
tenant sends in a conversation's items is priced against its ``tpm``, and what it
sends in the URL is answered as OpenAI would, never echoed whole."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, start_gateway, start_stub

KEY = "sk-hunt-price-0123456789"
FREE_KEY = "sk-hunt-free-0123456789"  # no limits: the other tests' charges never reach it
TPM = 20_000


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with contextlib.ExitStack() as stack:
        stub = stack.enter_context(contextlib.contextmanager(start_stub)("--model", STUB_MODEL))
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
            "auth": {
                "enabled": True,
                "keys": [
                    {"name": "tenant", "key": KEY, "tpm": TPM},
                    {"name": "free", "key": FREE_KEY},
                ],
            },
        }
        directory: Path = tmp_path_factory.mktemp("responses-hunt")
        yield stack.enter_context(contextlib.contextmanager(start_gateway)(config, directory))


def _call_with(**fields: str) -> list[dict[str, str]]:
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", **fields}
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}
    return [{"type": "message", "role": "user", "content": "hi"}, call, output]


@pytest.mark.parametrize("field", ["name", "call_id"])
def test_a_huge_function_call_field_is_priced_against_tpm(gateway: Gateway, field: str) -> None:
    """Unfixed, a 200,000-character ``name`` (the engine renders it: ~50,000 prompt
    tokens, the stub's usage said 50,055) was reserved as ~24 tokens and answered on
    this 20,000-tpm key."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(
            model=STUB_MODEL,
            input=_call_with(**{field: "f" * 200_000}),  # type: ignore[arg-type]
            max_output_tokens=10,
        )
    assert "tokens per min" in refused.value.message
    small = client.responses.create(model=STUB_MODEL, input=_call_with(), max_output_tokens=10)  # type: ignore[arg-type]
    assert small.status == "completed"  # nothing was charged for the refused one


def test_hostile_ids_and_listing_queries_are_answered_as_openai(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {FREE_KEY}"}
    url = f"{gateway.base_url}/responses"
    made = httpx.post(url, json={"model": STUB_MODEL, "input": "hi"}, headers=headers).json()
    for path in ("%2e%2e", "é", "a" * 5000, made["id"] + "x"):
        reply = httpx.get(f"{url}/{path}", headers=headers)
        assert reply.status_code == 404, path
        assert len(reply.json()["error"]["message"]) < 120
    assert httpx.get(f"{url}/..%2F..", headers=headers).status_code == 404
    listing = f"{url}/{made['id']}/input_items"
    for query, param in (
        ("limit=0", "limit"),
        ("order=up", "order"),
        ("after=" + "z" * 5000, "after"),
    ):
        reply = httpx.get(f"{listing}?{query}", headers=headers)
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert error["param"] == param and len(error["message"]) < 200
