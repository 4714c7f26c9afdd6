"""A model whose managed engines have all failed for good (``vgate serve``).

Before, the gateway answered its requests as it does a passing outage: 503
``engine_unavailable`` with ``Retry-After: 1``, forever, and the SDKs retried it; and
``/ready`` stayed 200 with every model dead. Now such a model's requests get 503
``model_unavailable`` with no retry hint (``x-should-retry: false``), the operator's
``/ready`` names it in ``failed_models``, and the gateway is not ready once every model
it serves has failed for good (one dead model of two leaves it ready). ``/health``
(liveness) stays 200 throughout.

The broken engine is a stub given an argument it rejects: it exits at once, every start.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, start_gateway

BROKEN = "broken-model"
HEALTH = {"interval_s": 0.2, "drain_timeout_s": 0, "stop_timeout_s": 1}
RESTART = {"max_restarts": 1, "backoff_initial_s": 0.1}


BROKEN_LORA = "broken-lora"


def managed(name: str, *extra_args: str, loras: tuple[str, ...] = ()) -> dict[str, Any]:
    engine: dict[str, Any] = {
        "kind": "stub", "health": HEALTH, "restart": RESTART, "extra_args": list(extra_args),
    }  # fmt: skip
    if loras:
        engine["lora_modules"] = [{"name": lora, "path": f"/adapters/{lora}"} for lora in loras]
    return {"name": name, "engine": engine}


def config(tmp_path: Path, *models: dict[str, Any]) -> dict[str, Any]:
    return {
        "engines": {"log_dir": str(tmp_path / "logs"), "watch_interval_s": 0.1},
        "models": list(models),
    }


def chat(gateway: Gateway, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{gateway.base_url}/chat/completions", json=body, timeout=10)


def failed_models(gateway: Gateway) -> list[str] | None:
    return gateway.ready().get("failed_models")


@pytest.fixture
def half_broken(tmp_path: Path) -> Iterator[Gateway]:
    yield from start_gateway(
        config(tmp_path, managed(STUB_MODEL), managed(BROKEN, "--no-such-flag")), tmp_path
    )


@pytest.fixture
def broken_with_adapter(tmp_path: Path) -> Iterator[Gateway]:
    broken = managed(BROKEN, "--no-such-flag", loras=(BROKEN_LORA,))
    yield from start_gateway(config(tmp_path, managed(STUB_MODEL), broken), tmp_path)


@pytest.fixture
def all_broken(tmp_path: Path) -> Iterator[Gateway]:
    yield from start_gateway(config(tmp_path, managed(BROKEN, "--no-such-flag")), tmp_path)


def test_a_failed_model_is_refused_for_good_and_the_other_still_served(
    half_broken: Gateway,
) -> None:
    holds_soon(lambda: failed_models(half_broken) == [BROKEN], 30, "the model never failed")
    holds_soon(lambda: bool(half_broken.ready()["engines"].get(STUB_MODEL)), 30)

    refused = chat(half_broken, BROKEN)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "service_unavailable",
        "model_unavailable",
        "model",
    )
    assert "will not be restarted" in error["message"]
    assert "retry-after" not in refused.headers
    assert "retry-after-ms" not in refused.headers
    assert refused.headers["x-should-retry"] == "false"

    assert chat(half_broken, STUB_MODEL).status_code == 200
    assert httpx.get(f"{half_broken.url}/ready").status_code == 200  # one model serves
    assert half_broken.ready()["status"] == "ready"


def test_a_gateway_whose_every_model_failed_is_not_ready_but_alive(all_broken: Gateway) -> None:
    holds_soon(lambda: failed_models(all_broken) == [BROKEN], 30, "the model never failed")
    public = httpx.get(f"{all_broken.url}/ready")
    assert (public.status_code, public.json()) == (503, {"status": "unavailable"})
    detail = httpx.get(f"{all_broken.operator_url}/ready")
    assert detail.status_code == 503 and detail.json()["status"] == "unavailable"
    assert httpx.get(f"{all_broken.url}/health").status_code == 200
    assert chat(all_broken, BROKEN).json()["error"]["code"] == "model_unavailable"


def test_an_adapter_of_failed_engines_is_refused_as_its_model_not_as_unknown(
    broken_with_adapter: Gateway,
) -> None:
    """The adapter answered 404 ``model_not_found`` (its engines were no longer routable,
    so it left the pool): a client was told the adapter does not exist."""
    expected = sorted([BROKEN, BROKEN_LORA])
    holds_soon(lambda: failed_models(broken_with_adapter) == expected, 30, "never failed")
    refused = chat(broken_with_adapter, BROKEN_LORA)
    assert refused.status_code == 503
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("model_unavailable", "model")
    assert refused.headers["x-should-retry"] == "false"
    assert chat(broken_with_adapter, STUB_MODEL).status_code == 200
    assert chat(broken_with_adapter, "no-such-model").status_code == 404
