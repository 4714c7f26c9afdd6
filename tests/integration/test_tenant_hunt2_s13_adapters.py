"""A hostile tenant against LoRA adapters, per-model limits, key rotation and priority
tiers, through a real gateway, redis-server and a managed stub engine serving the base
model ``base`` and its adapter ``sql`` (``engine.lora_modules``).

- A key allowed only the base model reaches no adapter, on any route (completions,
  Responses, vLLM's own routes, ``/v1/models``), and a key allowed only the adapter
  reaches no base model: an adapter is a model of its own (README, LoRA adapters).
- A key revoked and made again under its name carries on with its old counters (a
  key's name is who it is): the rotation escapes no limit.
- A ``low`` key asking for an earlier priority (header, body, a body with the field
  twice) runs at ``low`` on every route."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import Gateway, start_gateway

RUN = uuid.uuid4().hex[:8]
BASE, ADAPTER = "base", "sql"
ADMIN_KEY = f"admin-{RUN}-0123456789abcdef"
BASE_ONLY = f"sk-hunt2-base-{RUN}-0123456789"
ADAPTER_ONLY = f"sk-hunt2-adapter-{RUN}-0123456789"
LOW = f"sk-hunt2-low-{RUN}-0123456789"
LOW_PRIORITY = 10
PER_MODEL = f"sk-hunt2-per-model-{RUN}-0123456789"


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("tenant-hunt2-adapters")
    engine = {
        "kind": "stub",
        "lora_modules": [{"name": ADAPTER, "path": "/adapters/sql"}],
        "health": {"interval_s": 0.2},
    }
    keys = [
        {"name": f"base-{RUN}", "key": BASE_ONLY, "models": [BASE]},
        {"name": f"adapter-{RUN}", "key": ADAPTER_ONLY, "models": [ADAPTER]},
        {"name": f"low-{RUN}", "key": LOW, "priority": "low"},
        {"name": f"per-model-{RUN}", "key": PER_MODEL, "model_limits": {ADAPTER: {"rpm": 1}}},
    ]
    config = {
        "engines": {"log_dir": str(directory / "logs"), "watch_interval_s": 0.1},
        "models": [{"name": BASE, "engine": engine}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "admin_key": ADMIN_KEY, "keys": keys},
        "routing": {"priority_tiers": True},
    }
    for started in start_gateway(config, Path(directory)):
        holds_soon(functools.partial(serves_base, started), 60, "no engine")
        yield started


def serves_base(gateway: Gateway) -> bool:
    return bool(gateway.ready()["engines"].get(BASE))


def post(
    gateway: Gateway, path: str, key: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key}", **headers},
        timeout=30,
    )


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


ROUTES: list[tuple[str, Any]] = [
    ("/v1/chat/completions", chat_body),
    ("/v1/completions", lambda m: {"model": m, "prompt": "hi", "max_tokens": 4}),
    ("/v1/responses", lambda m: {"model": m, "input": "hi", "max_output_tokens": 4}),
    ("/tokenize", lambda m: {"model": m, "prompt": "hi"}),
]


@pytest.mark.parametrize(("path", "body"), ROUTES)
def test_a_base_only_key_reaches_no_adapter_and_the_reverse(
    gateway: Gateway, path: str, body: Any
) -> None:
    for key, allowed, other in ((BASE_ONLY, BASE, ADAPTER), (ADAPTER_ONLY, ADAPTER, BASE)):
        served = post(gateway, path, key, body(allowed))
        assert served.status_code == 200, f"{path} {allowed}: {served.text[:300]}"
        refused = post(gateway, path, key, body(other))
        assert refused.status_code == 404, f"{path} {other}: {refused.text[:300]}"
        assert refused.json()["error"]["code"] == "model_not_found"


def test_models_lists_only_what_the_key_may_use(gateway: Gateway) -> None:
    for key, allowed in ((BASE_ONLY, BASE), (ADAPTER_ONLY, ADAPTER)):
        listing = httpx.get(
            f"{gateway.base_url}/models", headers={"Authorization": f"Bearer {key}"}
        ).json()
        assert [m["id"] for m in listing["data"]] == [allowed]


def test_an_adapters_requests_are_charged_under_its_own_name(gateway: Gateway) -> None:
    """``model_limits`` naming the adapter bound it; the base model is another model
    (README: an adapter is a model of its own, and per-model settings name it)."""
    path = "/v1/chat/completions"
    assert post(gateway, path, PER_MODEL, chat_body(ADAPTER)).status_code == 200
    refused = post(gateway, path, PER_MODEL, chat_body(ADAPTER))
    assert refused.status_code == 429 and refused.json()["error"]["type"] == "requests"
    refused = post(gateway, "/tokenize", PER_MODEL, {"model": ADAPTER, "prompt": "hi"})
    assert refused.status_code == 429, refused.text  # vLLM's own routes count too
    assert post(gateway, path, PER_MODEL, chat_body(BASE)).status_code == 200


def admin(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{gateway.operator_url}/admin/keys{path}",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
        **kwargs,
    )


def test_a_key_made_again_under_its_name_keeps_its_counters(gateway: Gateway) -> None:
    name = f"rotated-{RUN}"
    made = admin(gateway, "POST", "", json={"name": name, "rpm": 2})
    assert made.status_code == 201, made.text
    first = made.json()["key"]
    assert [post(gateway, "/v1/chat/completions", first, chat_body(BASE)).status_code
            for _ in range(3)] == [200, 200, 429]  # fmt: skip
    assert admin(gateway, "DELETE", f"/{name}").status_code == 200
    again = admin(gateway, "POST", "", json={"name": name, "rpm": 100})
    assert again.status_code == 201, again.text
    second = again.json()["key"]
    refused = post(gateway, "/v1/chat/completions", second, chat_body(BASE))
    # 100 a minute now, 2 counted: admitted, and counted with the old ones
    assert refused.status_code == 200, refused.text
    assert refused.headers["x-ratelimit-remaining-requests"] == "97"
    old = post(gateway, "/v1/chat/completions", first, chat_body(BASE))
    assert old.status_code == 401  # the old secret stays revoked


def engine_url(gateway: Gateway) -> str:
    urls = list(gateway.ready()["engines"][BASE])
    assert len(urls) == 1, urls
    return str(urls[0])


PRIORITY_CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v1/chat/completions", orjson.dumps(chat_body(ADAPTER)), {"x-vgate-priority": "high"}),
    ("/v1/chat/completions", orjson.dumps({**chat_body(ADAPTER), "priority": -100}), {}),
    ("/v1/completions", b'{"model": "sql", "prompt": "hi", "priority": -5}', {}),
    ("/tokenize", b'{"model": "sql", "prompt": "hi", "priority": -100}', {}),
    # the field twice: JSON parsers keep the last; the first must not slip through
    ("/v1/chat/completions", b'{"priority": -100, "model": "sql", "messages": '
     b'[{"role": "user", "content": "hi"}], "priority": 10}', {}),
    ("/tokenize", b'{"priority": -100, "model": "sql", "prompt": "hi", "priority": 10}', {}),
]  # fmt: skip


@pytest.mark.parametrize(("path", "raw", "headers"), PRIORITY_CASES)
def test_a_low_key_runs_at_low_whatever_it_asks(
    gateway: Gateway, path: str, raw: bytes, headers: dict[str, str]
) -> None:
    answer = httpx.post(
        f"{gateway.url}{path}",
        content=raw,
        headers={"Authorization": f"Bearer {LOW}", "content-type": "application/json", **headers},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    seen = httpx.get(f"{engine_url(gateway)}/stub/stats").json()["last_request"]
    assert seen["path"] == path
    assert seen["body"]["priority"] == LOW_PRIORITY, seen["body"]
