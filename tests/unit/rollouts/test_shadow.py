"""The shadow copier: share, bound, payload, failures, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.config.rollouts import RolloutSettings
from gateway.errors import UpstreamStatusError
from gateway.observability.metrics import GatewayMetrics
from gateway.rollouts.shadow import ShadowCopier

ROLLOUT = RolloutSettings.model_validate(
    {
        "model": "r",
        "variants": [{"model": "a", "weight": 1}],
        "shadow": {"model": "s", "share": 0.5, "max_concurrent": 2},
    }
)


class Engine:
    """A shadow model that answers when told to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, dict[str, object]]] = []
        self.release = asyncio.Event()
        self.fail = False

    async def __call__(self, model: str, path: str, payload: bytes, request_id: str) -> bytes:
        self.sent.append((model, path, orjson.loads(payload)))
        await self.release.wait()
        if self.fail:
            raise UpstreamStatusError(500, b"{}", "application/json")
        return orjson.dumps({"choices": [{"message": {"content": "same"}}]})


def _sample(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_copies_follow_the_share_and_the_bound() -> None:
    metrics, engine = GatewayMetrics(), Engine()
    draws = iter([0.9, 0.1, 0.2, 0.3])
    copier = ShadowCopier([ROLLOUT], {"s": "served-s"}, engine, metrics, lambda: next(draws))
    body = {"model": "a", "messages": [], "stream": True, "stream_options": {}}
    assert copier.copy("r", "/v1/chat/completions", body, "id") is None  # 0.9: not drawn
    copies = [copier.copy("r", "/v1/chat/completions", body, "id") for _ in range(3)]
    assert copies[2] is None  # beyond the bound: shed
    await asyncio.sleep(0)
    assert copier.in_flight("r") == 2
    assert engine.sent == []  # a copy waits for its primary to end
    for copy in copies[:2]:
        assert copy is not None
        copy.release()
    await asyncio.sleep(0)
    assert _sample(metrics, "vgate_shadow_shed_total", rollout="r") == 1
    # Sent non-streaming, to the shadow's served name.
    assert engine.sent[0] == ("s", "/v1/chat/completions", {"model": "served-s", "messages": []})
    engine.release.set()
    while copier.in_flight("r"):
        await asyncio.sleep(0.001)
    labels = {"rollout": "r", "variant": "s", "status": "200"}
    assert _sample(metrics, "vgate_shadow_requests_total", **labels) == 2
    assert copier.copy("other", "/v1/chat/completions", body, "id") is None


async def test_failures_are_counted_and_compared_with_nothing() -> None:
    metrics, engine = GatewayMetrics(), Engine()
    engine.fail = True
    engine.release.set()
    copier = ShadowCopier([ROLLOUT], {}, engine, metrics, lambda: 0.0)
    copy = copier.copy("r", "/v1/chat/completions", {"temperature": 0}, "id")
    assert copy is not None and copy.pair is not None  # deterministic: compared
    copy.pair.primary("same")
    copy.release()
    while copier.in_flight("r"):
        await asyncio.sleep(0.001)
    labels = {"rollout": "r", "variant": "s", "status": "500"}
    assert _sample(metrics, "vgate_shadow_requests_total", **labels) == 1
    assert _sample(metrics, "vgate_shadow_agreement_total", rollout="r", outcome="same") == 0


async def test_close_cancels_copies_in_flight_and_refuses_new_ones() -> None:
    metrics, engine = GatewayMetrics(), Engine()
    copier = ShadowCopier([ROLLOUT], {}, engine, metrics, lambda: 0.0)
    copy = copier.copy("r", "/v1/chat/completions", {}, "id")
    assert copy is not None
    copy.release()
    await asyncio.sleep(0)
    await asyncio.wait_for(copier.close(), 1)
    assert copier.in_flight("r") == 0
    assert copier.copy("r", "/v1/chat/completions", {}, "id") is None


async def test_a_copy_never_goes_ahead_of_clients_when_tiers_reach_the_engine() -> None:
    metrics, engine = GatewayMetrics(), Engine()
    engine.release.set()
    copier = ShadowCopier([ROLLOUT], {}, engine, metrics, lambda: 0.0)
    bodies: list[dict[str, Any]] = [
        {"model": "a", "priority": p}
        for p in (-10, 0, 10, 50)  # high, normal, low, later
    ]
    for body in [*bodies, {"model": "a"}]:  # the last: tiers off, no priority added
        copy = copier.copy("r", "/v1/chat/completions", body, "id")
        assert copy is not None
        copy.release()
        while copier.in_flight("r"):  # one at a time: the bound is 2
            await asyncio.sleep(0.001)
    assert [sent[2].get("priority") for sent in engine.sent] == [10, 10, 10, 50, None]


async def test_a_copy_waiting_for_its_primary_is_cancelled_at_shutdown() -> None:
    metrics, engine = GatewayMetrics(), Engine()
    copier = ShadowCopier([ROLLOUT], {}, engine, metrics, lambda: 0.0)
    assert copier.copy("r", "/v1/chat/completions", {}, "id") is not None  # never released
    await asyncio.sleep(0)
    await asyncio.wait_for(copier.close(), 1)
    assert copier.in_flight("r") == 0
    assert engine.sent == []


async def test_a_dropped_copy_is_never_sent_and_frees_its_place() -> None:
    """A primary charged nothing (its engine refused it) drops its copy: a copy sent
    then would be generation on no key's budget."""
    metrics, engine = GatewayMetrics(), Engine()
    engine.release.set()
    copier = ShadowCopier([ROLLOUT], {}, engine, metrics, lambda: 0.0)
    copy = copier.copy("r", "/v1/chat/completions", {}, "id")
    assert copy is not None
    copy.drop()
    while copier.in_flight("r"):
        await asyncio.sleep(0.001)
    assert engine.sent == []
    assert (
        _sample(metrics, "vgate_shadow_requests_total", rollout="r", variant="s", status="200") == 0
    )
