"""Found by the churn hunt (a Redis ``CLIENT PAUSE`` under mixed load): a Responses API
answer finished while the rate limiter's short deadline (``redis.timeout_s``) had just
marked Redis down was answered with its id but never stored: the store skipped the
write at once ("redis is unreachable (recent failure)"), though Redis was only paused
for far less than the store's own deadline. The client then got 404 for an id it was
given. The write is now tried within the store's deadline whatever the link says."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.helpers.redis_server import run_redis
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

KEY = "sk-churn-store-0123456789"
PAUSE_MS = 1500  # past redis.timeout_s, well within the store's own deadline (5 s)


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def private_redis() -> Iterator[str]:
    """Its own Redis: pausing it must not stall other modules' gateways."""
    with run_redis() as url:
        yield url


@pytest.fixture(scope="module")
def gateway(
    engine: Stub, private_redis: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": private_redis, "timeout_s": 0.25, "retry_s": 2.0},
        # A limit: admission asks Redis, times out and marks it down (local policy).
        "auth": {"enabled": True, "keys": [{"name": "churn", "key": KEY, "rpm": 100_000}]},
        # No quota read before admission (it would wait out the pause on the store's pool).
        "responses": {"max_bytes_per_key": None},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("churn-store"))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_response_answered_during_a_brief_redis_pause_is_stored(
    gateway: Gateway, private_redis: str, stream: bool
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": STUB_MODEL, "input": f"churn {uuid.uuid4().hex}", "stream": stream}
    pauser = redis.Redis.from_url(private_redis)
    paused_at = time.monotonic()
    pauser.client_pause(PAUSE_MS, all=True)
    with httpx.Client(timeout=15) as client:
        created = client.post(f"{gateway.base_url}/responses", json=body, headers=headers)
        answered_in = time.monotonic() - paused_at
        assert created.status_code == 200, created.text
        response_id = _response_id(created, stream)
        # Read once the pause is over and the link's down window (retry_s) has passed:
        # a 404 then means the record was never written.
        reads: list[httpx.Response] = []

        def answered() -> bool:
            reads.append(client.get(f"{gateway.base_url}/responses/{response_id}", headers=headers))
            return reads[-1].status_code != 503  # 503: the store still counted as down

        holds_soon(answered, within_s=15, message="the store never became readable")
    assert answered_in < PAUSE_MS / 1000 + 5.0  # held at most the store's deadline
    assert reads[-1].status_code == 200, reads[-1].text
    assert reads[-1].json()["id"] == response_id


def _response_id(created: httpx.Response, stream: bool) -> str:
    """The id of the answer the client got (a stream's: its ``response.completed``)."""
    if not stream:
        response_id: str = created.json()["id"]
        return response_id
    for line in created.text.splitlines():
        if line.startswith("data: ") and "response.completed" in line:
            completed_id: str = json.loads(line[len("data: ") :])["response"]["id"]
            return completed_id
    raise AssertionError(f"no response.completed event: {created.text}")
