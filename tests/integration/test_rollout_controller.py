"""Issue #17, acceptance 2: three gateway replicas sharing one redis-server.

A canary whose engine answers 25% 500s is set to weight 0 once its window holds
``min_requests`` of its requests, and every replica applies that within 1 s of the
decision (the decision time is kept in the shared state); a healthy canary walks
through its promotion steps; operators set, promote and roll back through
``/admin/rollouts`` and ``vgate rollout``, on every replica.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
BAD, GOOD, OPS = f"bad-{RUN}", f"good-{RUN}", f"ops-{RUN}"
CLIENT_KEY = "sk-rollout-client-0123456789"
ADMIN_KEY = "admin-key-rollouts-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LOOSE_LATENCY = {"max_ttft_p95_ratio": 1000, "max_itl_p95_ratio": 1000}


@pytest.fixture(scope="module")
def stubs() -> Iterator[tuple[Stub, Stub]]:
    with contextlib.ExitStack() as stack:
        healthy = stack.enter_context(
            contextlib.contextmanager(start_stub)("--model", "stable-m", "--model", "good-m")
        )
        failing = stack.enter_context(
            contextlib.contextmanager(start_stub)("--model", "bad-m", "--fail-rate", "0.25")
        )
        yield healthy, failing


@pytest.fixture(scope="module")
def config(
    stubs: tuple[Stub, Stub], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    healthy, failing = stubs
    return {
        "models": [
            {"name": "stable-m", "endpoints": [healthy.url]},
            {"name": "good-m", "endpoints": [healthy.url]},
            {"name": "bad-m", "endpoints": [failing.url]},
        ],
        "rollouts": [
            {
                "model": BAD,
                "variants": [
                    {"model": "stable-m", "weight": 50},
                    {"model": "bad-m", "weight": 50, "canary": True},
                ],
                "slo": {"max_error_rate": 0.05, "window_s": 60, "min_requests": 40},
            },
            {
                "model": GOOD,
                "variants": [
                    {"model": "stable-m", "weight": 90},
                    {"model": "good-m", "weight": 10, "canary": True},
                ],
                "slo": {"window_s": 60, "min_requests": 3, **LOOSE_LATENCY},
                "promote": {"steps": [25, 50, 100], "healthy_for_s": 1},
            },
            {
                "model": OPS,
                "variants": [
                    {"model": "stable-m", "weight": 90},
                    {"model": "good-m", "weight": 10, "canary": True},
                ],
                "slo": {"min_requests": 1_000_000},  # never judged: operators only
            },
        ],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [{"name": "client", "key": CLIENT_KEY}],
        },
        # 500s must reach the controller as failures: no retry hides them, no breaker
        # takes the engine away.
        "upstream": {"retries": 0, "breaker_failures": 100_000},
    }


@pytest.fixture(scope="module")
def replicas(
    config: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Gateway]]:
    directory = tmp_path_factory.mktemp("rollouts")
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(contextlib.contextmanager(start_gateway)(config, directory))
            for _ in range(3)
        ]


def rollout_on(gateway: Gateway, model: str) -> dict[str, Any]:
    answer = httpx.get(f"{gateway.operator_url}/admin/rollouts", headers=ADMIN, timeout=5)
    answer.raise_for_status()
    return next(r for r in answer.json()["data"] if r["model"] == model)


def weights_of(rollout: dict[str, Any]) -> dict[str, float]:
    return {v["model"]: v["weight"] for v in rollout["variants"]}


def admin_post(gateway: Gateway, path: str, body: Any = None) -> httpx.Response:
    return httpx.post(f"{gateway.operator_url}/admin/rollouts/{path}", json=body, headers=ADMIN)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Load:
    """Requests for ``model``, spread over the replicas in turn, on a thread until stopped."""

    def __init__(self, replicas: list[Gateway], model: str) -> None:
        self.statuses: list[int] = []
        self._replicas = replicas
        self._model = model
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        body = {"model": self._model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4}  # fmt: skip
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        with httpx.Client(timeout=10) as client:
            for gateway in itertools.cycle(self._replicas):
                if self._stop.is_set():
                    return
                url = f"{gateway.base_url}/chat/completions"
                self.statuses.append(client.post(url, json=body, headers=headers).status_code)


def test_a_failing_canary_is_rolled_back_on_every_replica_within_a_second(
    replicas: list[Gateway],
) -> None:
    assert weights_of(rollout_on(replicas[0], BAD)) == {"stable-m": 50.0, "bad-m": 50.0}
    seen_at: dict[int, float] = {}
    with Load(replicas, BAD) as load:
        deadline = time.monotonic() + 60
        while len(seen_at) < len(replicas):
            assert time.monotonic() < deadline, f"no rollback; statuses {set(load.statuses)}"
            for index, gateway in enumerate(replicas):
                if index not in seen_at and weights_of(rollout_on(gateway, BAD))["bad-m"] == 0:
                    seen_at[index] = time.time()
    assert set(load.statuses) <= {200, 500}
    assert 500 in load.statuses  # the canary's failures did reach clients (no retry)
    rollout = rollout_on(replicas[1], BAD)
    last = rollout["last_rollback"]
    assert (last["variant"], last["reason"], last["by"]) == ("bad-m", "error_rate", "controller")
    assert "max_error_rate 0.05" in last["detail"]
    for index, at in seen_at.items():
        assert at - last["at"] < 1.0, f"replica {index} applied it {at - last['at']:.2f} s late"
    assert weights_of(rollout) == {"stable-m": 50.0, "bad-m": 0.0}
    canary = next(v for v in rollout["variants"] if v["model"] == "bad-m")
    assert canary["state"] == "rolled_back" and canary["rolled_back"]["reason"] == "error_rate"
    # One decision, counted once across the replicas; every replica's gauge says 0.
    counted = sum(_sample(g, "vgate_rollout_rollbacks_total", BAD, "bad-m") for g in replicas)
    assert counted == 1.0
    assert all(_sample(g, "vgate_rollout_weight", BAD, "bad-m") == 0.0 for g in replicas)


def test_a_healthy_canary_walks_through_its_promotion_steps(replicas: list[Gateway]) -> None:
    shares: list[float] = []

    def share() -> float:
        rollout = rollout_on(replicas[0], GOOD)
        value = next(v["share_percent"] for v in rollout["variants"] if v["model"] == "good-m")
        if not shares or shares[-1] != value:
            shares.append(value)
        return float(value)

    with Load(replicas, GOOD) as load:
        wait_for(lambda: share() == 100.0, 60, "the canary at 100%")
    assert set(load.statuses) == {200}
    assert shares == [10.0, 25.0, 50.0, 100.0]
    final = {"stable-m": 0.0, "good-m": 100.0}
    wait_for(lambda: weights_of(rollout_on(replicas[2], GOOD)) == final, 1.0, "every replica")
    rollout = rollout_on(replicas[2], GOOD)
    assert (rollout["last_action"], rollout["changed_by"]) == ("promote", "controller")
    assert rollout["last_rollback"] is None


def test_admin_set_rollback_promote_reach_every_replica(replicas: list[Gateway]) -> None:
    first, last = replicas[0], replicas[-1]
    answer = admin_post(first, f"{OPS}/weights", {"weights": {"good-m": 30}})
    assert answer.status_code == 200, answer.text
    assert weights_of(answer.json()) == {"stable-m": 90.0, "good-m": 30.0}
    wait_for(lambda: weights_of(rollout_on(last, OPS))["good-m"] == 30.0, 1.0, "the new weight")

    answer = admin_post(first, f"{OPS}/rollback")
    assert answer.status_code == 200, answer.text
    assert weights_of(answer.json())["good-m"] == 0.0
    wait_for(lambda: weights_of(rollout_on(last, OPS))["good-m"] == 0.0, 1.0, "the rollback")
    rollout = rollout_on(last, OPS)
    assert rollout["last_rollback"]["reason"] == "operator"
    assert next(v for v in rollout["variants"] if v["canary"])["state"] == "rolled_back"

    answer = admin_post(first, f"{OPS}/promote", {"variant": "good-m"})  # re-enables: 10%
    assert answer.status_code == 200, answer.text
    canary = next(v for v in answer.json()["variants"] if v["canary"])
    assert canary["share_percent"] == 10.0 and canary["rolled_back"] is None
    answer = admin_post(first, f"{OPS}/promote")
    assert next(v for v in answer.json()["variants"] if v["canary"])["share_percent"] == 25.0
    wait_for(
        lambda: weights_of(rollout_on(last, OPS)) == weights_of(answer.json()), 1.0, "promotion"
    )


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("nope/weights", {"weights": {"stable-m": 1}}, 404, "rollout_not_found"),
        (f"{OPS}/weights", {"weights": {"other": 1}}, 400, "unknown_variant"),
        (f"{OPS}/weights", {"weights": {"good-m": -1}}, 400, "invalid_weights"),
        (f"{OPS}/weights", {"weights": {"good-m": 1e300}}, 400, "invalid_weights"),
        (f"{OPS}/weights", {"weights": {"good-m": True}}, 400, "invalid_request"),
        (f"{OPS}/weights", {"weights": {"good-m": "5"}}, 400, "invalid_request"),
        (f"{OPS}/weights", {"weights": {"stable-m": 0, "good-m": 0}}, 400, "invalid_weights"),
        (f"{OPS}/weights", {"weights": {}}, 400, "invalid_request"),
        (f"{OPS}/weights", [1, 2], 400, "invalid_request"),
        (f"{OPS}/promote", {"variant": "stable-m"}, 400, "unknown_variant"),
        (f"{OPS}/rollback", {"variant": ["x"]}, 400, "unknown_variant"),
    ],
)
def test_admin_refusals_are_openai_errors(
    replicas: list[Gateway], path: str, body: Any, status: int, code: str
) -> None:
    before = rollout_on(replicas[0], OPS)
    answer = admin_post(replicas[0], path, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]
    assert rollout_on(replicas[0], OPS)["version"] == before["version"]


def test_admin_routes_need_the_admin_key(replicas: list[Gateway]) -> None:
    url = f"{replicas[0].operator_url}/admin/rollouts"
    assert httpx.get(url).status_code == 401
    bad = {"Authorization": f"Bearer {CLIENT_KEY}"}
    assert httpx.post(f"{url}/{OPS}/rollback", headers=bad).status_code == 401
    assert (
        httpx.post(f"{url}/{OPS}/weights", content=b"{not json", headers=ADMIN).status_code == 400
    )
    # Not on the public port when an operator listener exists.
    assert httpx.get(f"{replicas[0].url}/admin/rollouts", headers=ADMIN).status_code == 404


def test_cli_round_trip(replicas: list[Gateway], tmp_path: Path) -> None:
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"auth": {"enabled": True, "admin_key": ADMIN_KEY}}))

    def vgate(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "gateway", "rollout", *args, "--config", str(config),
                "--url", replicas[1].operator_url]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)

    done = vgate("set", OPS, "stable-m=60", "good-m=40")
    assert done.returncode == 0, done.stderr
    assert "good-m" in done.stdout and "40" in done.stdout
    wait_for(lambda: weights_of(rollout_on(replicas[2], OPS))["good-m"] == 40.0, 1.0, "set")
    done = vgate("rollback", OPS, "--json")
    assert done.returncode == 0, done.stderr
    assert '"reason":"operator"' in done.stdout
    done = vgate("promote", OPS, "--variant", "good-m")
    assert done.returncode == 0, done.stderr
    done = vgate("status", "--json")
    assert done.returncode == 0, done.stderr
    assert OPS in done.stdout and BAD in done.stdout
    done = vgate("status")
    assert done.returncode == 0 and f"rollout {OPS}" in done.stdout
    refused = vgate("promote", "no-such-rollout")
    assert refused.returncode == 1 and "rollout_not_found" in refused.stderr
    refused = vgate("set", OPS, "good-m=2e9")  # over the gateway's most (MAX_WEIGHT)
    assert refused.returncode == 1 and "invalid_weights" in refused.stderr
    refused = vgate("set", OPS, "good-m=-3")  # refused before any call
    assert refused.returncode == 2 and "a weight of 0 or more" in refused.stderr


def _sample(gateway: Gateway, name: str, rollout: str, variant: str) -> float:
    total = 0.0
    for line in gateway.metrics().splitlines():
        if (
            line.startswith(name)
            and f'rollout="{rollout}"' in line
            and f'variant="{variant}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total
