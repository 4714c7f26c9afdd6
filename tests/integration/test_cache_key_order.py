"""The cache key and the order of a body's keys, through a real gateway, redis-server
and a stub engine of its own (its request counter counts only this module's calls).

Inside a field, key order can reach the engine's input (a chat template renders a
tool's schema with ``tojson``; guided decoding follows a schema's property order),
so two requests that differ only there are two prompts and each gets the engine's
own answer. The top-level fields are read by name: reordering them still hits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = "sk-cache-order-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def cached(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": [{"name": f"order-{RUN}", "key": KEY}]},
        "cache": {"enabled": True, "namespace": f"order-{RUN}"},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("cache-order"))


def calls(engine: Stub) -> int:
    return int(engine.stats()["requests"])


def post(gateway: Gateway, body: dict[str, Any]) -> httpx.Response:
    """``body`` sent as these exact bytes (its keys in the order the dict has them)."""
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    return response


def tool(properties: list[str]) -> list[dict[str, Any]]:
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in properties}}
    return [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]


def request(text: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": STUB_MODEL,
        "messages": [{"role": "user", "content": f"{RUN} {text}"}],
        "temperature": 0,
        "max_tokens": 8,
        **fields,
    }


def test_tool_schemas_differing_only_in_key_order_are_two_entries(
    cached: Gateway, engine: Stub
) -> None:
    before = calls(engine)
    first = post(cached, request("tools", tools=tool(["city", "unit"])))
    second = post(cached, request("tools", tools=tool(["unit", "city"])))
    assert [r.headers["x-cache"] for r in (first, second)] == ["MISS", "MISS"]
    assert calls(engine) == before + 2  # each prompt got its own engine call
    again = post(cached, request("tools", tools=tool(["unit", "city"])))
    assert again.headers["x-cache"] == "HIT"  # the same schema, in the same order
    assert calls(engine) == before + 2


def test_a_json_schema_differing_only_in_key_order_is_another_entry(
    cached: Gateway, engine: Stub
) -> None:
    def schema(order: list[str]) -> dict[str, Any]:
        properties = {name: {"type": "integer"} for name in order}
        spec = {"name": "point", "schema": {"type": "object", "properties": properties}}
        return {"type": "json_schema", "json_schema": spec}

    before = calls(engine)
    first = post(cached, request("schema", response_format=schema(["x", "y"])))
    second = post(cached, request("schema", response_format=schema(["y", "x"])))
    assert [r.headers["x-cache"] for r in (first, second)] == ["MISS", "MISS"]
    assert calls(engine) == before + 2


def test_reordered_top_level_fields_still_hit(cached: Gateway, engine: Stub) -> None:
    body = request("top level", tools=tool(["city", "unit"]), tool_choice="auto")
    before = calls(engine)
    first = post(cached, body)
    reordered = post(cached, dict(reversed(list(body.items()))))
    assert [r.headers["x-cache"] for r in (first, reordered)] == ["MISS", "HIT"]
    assert calls(engine) == before + 1
    assert reordered.json()["choices"] == first.json()["choices"]
