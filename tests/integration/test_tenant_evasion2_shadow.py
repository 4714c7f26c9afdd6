"""A hostile tenant against its tokens-per-minute limit through a rollout's shadow, with
a real gateway, redis-server and stub engines.

A shadow copy is never charged to the key: it rides on its primary's charge. But a
primary its engine refuses (a 400: a prompt beyond the variant's context, a parameter
its vLLM does not take) is charged nothing, and its copy was sent all the same, with the
primary's body: a key with a 1,000-token budget had the shadow model generate 900
tokens for each such request, as often as its request rate allowed, on no budget. A
copy of a primary charged nothing is not sent (and frees its place at once)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.metrics_text import metric_sum
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = f"sk-shadowed-{RUN}-0123456789"
REFUSING, SERVING, SHADOW = "e2-refusing", "e2-serving", "e2-shadow"


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Stub]]:
    flags = {REFUSING: ("--fail-status", "400"), SERVING: (), SHADOW: ("--tokens", "100000")}
    starters = {model: start_stub("--model", model, *extra) for model, extra in flags.items()}
    yield {model: next(starter) for model, starter in starters.items()}
    for starter in starters.values():
        starter.close()


@pytest.fixture(scope="module")
def gateway(
    engines: dict[str, Stub], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    def rollout(name: str, variant: str) -> dict[str, Any]:
        shadow = {"model": SHADOW, "share": 1.0, "max_concurrent": 1}
        return {"model": name, "variants": [{"model": variant, "weight": 1}], "shadow": shadow}

    config: dict[str, Any] = {
        "models": [{"name": m, "endpoints": [s.url]} for m, s in engines.items()],
        "rollouts": [rollout("roll-refused", REFUSING), rollout("roll-served", SERVING)],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": [{"name": f"shadowed-{RUN}", "key": KEY, "tpm": 1000}]},
        "upstream": {"retries": 0, "breaker_failures": 1000},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("evasion2-shadow"))


def ask(gateway: Gateway, model: str, text: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 900}
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )


def test_a_primary_refused_by_its_engine_is_not_copied(
    gateway: Gateway, engines: dict[str, Stub]
) -> None:
    for n in range(3):
        refused = ask(gateway, "roll-refused", f"refused {n}")
        assert refused.status_code == 400, refused.text
    served = ask(gateway, "roll-served", "served")  # copied: the copies' queue is live
    assert served.status_code == 200, served.text

    def copies(rollout: str) -> float:
        return metric_sum(gateway.metrics(), "vgate_shadow_requests_total", rollout=rollout)

    holds_soon(lambda: copies("roll-served") == 1, message="the served request's copy")
    shadow = engines[SHADOW].stats()
    assert shadow["requests"] == 1, shadow["requests"]  # 4 before: the refused ones' too
    assert shadow["last_request"]["body"]["messages"][0]["content"] == "served"
    assert copies("roll-refused") == 0
    sheds = metric_sum(gateway.metrics(), "vgate_shadow_shed_total", rollout="roll-refused")
    assert sheds == 0  # each dropped copy freed its place (max_concurrent 1) at once
