"""Shadow traffic through a real gateway and stub engines (issue #17, acceptance 1): a
copy is never seen by the client, never cached, never charged, shed beyond
``max_concurrent`` while the primaries keep succeeding, and its agreement with the
primary is measured on deterministic requests.

The stubs answer from the prompt alone, so a shadow stub with the primary's token
count answers the same text, and one with half the tokens answers its first half
(token-overlap F1 = 2·8 / (16 + 8) = 2/3)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.metrics_text import metric_sum
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

KEY = "sk-shadow-limited-0123456789"
PRIMARY = "v-main"


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, Stub]]:
    flags = {
        PRIMARY: (),
        "shadow-same": (),
        "shadow-diff": ("--tokens", "8"),
        "shadow-slow": ("--ttft-ms", "3000"),
        "shadow-fail": ("--fail-status", "500"),
    }
    stubs: dict[str, Stub] = {}
    starters = []
    for model, extra in flags.items():
        starter = start_stub("--model", model, *extra)
        stubs[model] = next(starter)
        starters.append(starter)
    yield stubs
    for starter in starters:
        starter.close()


@pytest.fixture(scope="module")
def shadowed(
    engines: dict[str, Stub], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    def rollout(name: str, shadow: str, **extra: Any) -> dict[str, Any]:
        return {
            "model": name,
            "variants": [{"model": PRIMARY, "weight": 1}],
            "shadow": {"model": shadow, "share": 1.0, **extra},
        }

    config: dict[str, Any] = {
        "models": [{"name": m, "endpoints": [s.url]} for m, s in engines.items()],
        "rollouts": [
            rollout("mirror-same", "shadow-same"),
            rollout("mirror-diff", "shadow-diff"),
            rollout("mirror-slow", "shadow-slow", max_concurrent=2),
            rollout("mirror-fail", "shadow-fail"),
        ],
        "auth": {"enabled": True, "keys": [{"name": "limited", "key": KEY, "rpm": 1000}]},
        "cache": {"enabled": True},
        "upstream": {"retries": 0, "breaker_failures": 1000, "read_timeout_s": 10},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("shadow"))


def _ask(client: httpx.Client, model: str, prompt: str, **body: Any) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}], **body}
    return client.post(
        "/v1/chat/completions", json=payload, headers={"authorization": f"Bearer {KEY}"}
    )


def _client(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, timeout=30)


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _prompt() -> str:
    return f"shadow test {uuid.uuid4().hex}"


def test_the_client_never_sees_the_shadow(shadowed: Gateway, engines: dict[str, Stub]) -> None:
    """The shadow answers 500 every time: the client gets the primary's 200, its body
    and headers, with nothing of the shadow in them."""
    before = shadowed.metrics()
    failing_before = engines["shadow-fail"].stats()["requests"]
    prompt = _prompt()
    with _client(shadowed) as client:
        replies = [_ask(client, "mirror-fail", prompt, seed=n) for n in range(5)]
        direct = _ask(client, PRIMARY, prompt)
    assert [r.status_code for r in replies] == [200] * 5
    for reply in replies:
        assert reply.headers["x-vgate-variant"] == PRIMARY
        assert "shadow" not in str(reply.headers).lower()
        answer = reply.json()
        assert answer["model"] == "mirror-fail"
        assert answer["choices"][0]["message"] == direct.json()["choices"][0]["message"]

    def failed_copies() -> float:
        now = shadowed.metrics()
        labels = {"rollout": "mirror-fail", "variant": "shadow-fail", "status": "500"}
        return metric_sum(now, "vgate_shadow_requests_total", **labels) - metric_sum(
            before, "vgate_shadow_requests_total", **labels
        )

    _wait_for(lambda: failed_copies() == 5, "five failed shadow copies")
    assert engines["shadow-fail"].stats()["requests"] - failing_before == 5
    # Shadow copies are not client requests: no 500 in the request counters.
    after = shadowed.metrics()
    assert metric_sum(after, "vgate_requests_total", model="mirror-fail", status="500") == 0


def test_a_shadow_is_never_cached_nor_charged(shadowed: Gateway, engines: dict[str, Stub]) -> None:
    prompt = _prompt()
    copies_before = engines["shadow-same"].stats()["requests"]
    with _client(shadowed) as client:
        first = _ask(client, "mirror-same", prompt, temperature=0)
        _wait_for(
            lambda: engines["shadow-same"].stats()["requests"] == copies_before + 1,
            "the shadow copy",
        )
        second = _ask(client, "mirror-same", prompt, temperature=0)
        # The shadow model asked directly, with the copy's body: the copy stored nothing.
        direct = _ask(client, "shadow-same", prompt, temperature=0)
        third = _ask(client, "mirror-same", _prompt(), temperature=0)
    assert [r.headers["x-cache"] for r in (first, second, direct)] == ["MISS", "HIT", "MISS"]
    # Only the client's own requests are counted: each takes one from its allowance,
    # the shadow copy none.
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in (first, second)]
    assert remaining[0] - remaining[1] == 1
    assert int(direct.headers["x-ratelimit-remaining-requests"]) == remaining[1] - 1
    assert int(third.headers["x-ratelimit-remaining-requests"]) == remaining[1] - 2
    # A cache hit is not copied (the copy waits for nothing the client sends again).
    assert engines["shadow-same"].stats()["requests"] >= copies_before + 1


def test_copies_beyond_max_concurrent_are_shed_and_primaries_succeed(
    shadowed: Gateway,
) -> None:
    before = shadowed.metrics()
    with _client(shadowed) as client:
        started = time.monotonic()
        replies = [_ask(client, "mirror-slow", _prompt()) for _ in range(6)]
        elapsed = time.monotonic() - started
    assert [r.status_code for r in replies] == [200] * 6
    assert elapsed < 2.5  # no primary waited for its 3-second shadow

    def delta(name: str, **labels: str) -> float:
        return metric_sum(shadowed.metrics(), name, **labels) - metric_sum(before, name, **labels)

    assert delta("vgate_shadow_shed_total", rollout="mirror-slow") == 4
    _wait_for(
        lambda: delta("vgate_shadow_requests_total", rollout="mirror-slow", status="200") == 2,
        "the two slow copies",
    )


def test_agreement_is_measured_on_deterministic_requests(shadowed: Gateway) -> None:
    before = shadowed.metrics()
    with _client(shadowed) as client:
        for _ in range(3):
            assert _ask(client, "mirror-same", _prompt(), temperature=0).status_code == 200
            assert _ask(client, "mirror-diff", _prompt(), temperature=0).status_code == 200
        with client.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "mirror-same",
                "messages": [{"role": "user", "content": _prompt()}],
                "temperature": 0,
                "stream": True,
            },
            headers={"authorization": f"Bearer {KEY}"},
        ) as streamed:
            assert streamed.status_code == 200
            streamed.read()
        # Sampled: copied, never compared.
        assert _ask(client, "mirror-diff", _prompt(), temperature=0.7).status_code == 200

    def delta(name: str, **labels: str) -> float:
        return metric_sum(shadowed.metrics(), name, **labels) - metric_sum(before, name, **labels)

    def settled() -> bool:
        same = delta("vgate_shadow_agreement_total", rollout="mirror-same")
        diff = delta("vgate_shadow_agreement_total", rollout="mirror-diff")
        copies = delta("vgate_shadow_requests_total", rollout="mirror-diff")
        return same == 4 and diff == 3 and copies == 4

    _wait_for(settled, "every comparison")
    assert delta("vgate_shadow_agreement_total", rollout="mirror-same", outcome="same") == 4
    assert delta("vgate_shadow_agreement_total", rollout="mirror-diff", outcome="differ") == 3
    assert delta("vgate_shadow_token_overlap_sum", rollout="mirror-same") == pytest.approx(4.0)
    assert delta("vgate_shadow_token_overlap_sum", rollout="mirror-diff") == pytest.approx(2.0)
