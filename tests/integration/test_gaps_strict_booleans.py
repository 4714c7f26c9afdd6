"""Bug hunt: ``"stream": "yes"`` was read as true by the gateway (a lax pydantic bool)
and sent on; only the engine's own check stood between it and a stream. The OpenAI API
requires a JSON boolean: the gateway answers 400 itself, naming the field, and nothing
reaches the engine. ``/v1/responses`` already refused it; it is checked here alike."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub

MESSAGES = [{"role": "user", "content": "strict booleans"}]
ROUTES: dict[str, dict[str, Any]] = {
    "/chat/completions": {"model": STUB_MODEL, "messages": MESSAGES},
    "/completions": {"model": STUB_MODEL, "prompt": "strict booleans"},
}


def post(gateway: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}{path}", json=body, timeout=10)


@pytest.mark.parametrize("path", sorted(ROUTES))
@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_a_stream_that_is_not_a_boolean_is_the_gateways_400(
    gateway: Gateway, stub: Stub, path: str, value: Any
) -> None:
    before = stub.stats()["requests"]
    response = post(gateway, path, ROUTES[path] | {"stream": value})
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": {
            "message": "stream: must be a JSON boolean (true or false)",
            "type": "invalid_request_error",
            "param": "stream",
            "code": "invalid_request",
        }
    }
    assert "text/event-stream" not in response.headers.get("content-type", "")
    assert stub.stats()["requests"] == before  # refused before any engine saw it


@pytest.mark.parametrize("name", ["include_usage", "continuous_usage_stats"])
def test_stream_options_booleans_are_the_gateways_400(
    gateway: Gateway, stub: Stub, name: str
) -> None:
    before = stub.stats()["requests"]
    body = ROUTES["/chat/completions"] | {"stream": True, "stream_options": {name: "yes"}}
    response = post(gateway, "/chat/completions", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (f"stream_options.{name}", "invalid_request_error")
    assert stub.stats()["requests"] == before


@pytest.mark.parametrize("value", ["yes", 1])
def test_responses_refuse_a_stream_that_is_not_a_boolean(
    gateway: Gateway, stub: Stub, value: Any
) -> None:
    before = stub.stats()["requests"]
    body = {"model": STUB_MODEL, "input": "strict booleans", "stream": value}
    response = post(gateway, "/responses", body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == ("stream", "invalid_request_error")
    assert stub.stats()["requests"] == before


@pytest.mark.parametrize("path", sorted(ROUTES))
def test_json_booleans_still_work(gateway: Gateway, path: str) -> None:
    whole = post(gateway, path, ROUTES[path] | {"stream": False})
    assert whole.status_code == 200 and whole.json()["choices"]
    with httpx.stream(
        "POST", f"{gateway.base_url}{path}", json=ROUTES[path] | {"stream": True}, timeout=10
    ) as streamed:
        raw = streamed.read()
    assert streamed.status_code == 200 and raw.endswith(b"data: [DONE]\n\n")
