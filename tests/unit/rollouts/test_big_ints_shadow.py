"""A rollout's shadow copy is a body written anew (the shadow's served name, no
streaming): integers beyond 64 bits in the client's body reach the shadow exactly as
written, given the bytes the body was read from."""

from __future__ import annotations

import orjson

from gateway.config.rollouts import RolloutSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.rollouts.shadow import ShadowCopier
from tests.unit.pipeline.world import until

ROLLOUT = RolloutSettings.model_validate(
    {
        "model": "r",
        "variants": [{"model": "a", "weight": 1}],
        "shadow": {"model": "s", "share": 1.0, "max_concurrent": 1},
    }
)


async def test_a_shadow_copy_carries_big_integers_exactly() -> None:
    sent: list[bytes] = []

    async def engine(model: str, path: str, payload: bytes, request_id: str) -> bytes:
        sent.append(payload)
        return b'{"choices": []}'

    copier = ShadowCopier([ROLLOUT], {"s": "served-s"}, engine, GatewayMetrics(), lambda: 0.0)
    source = b'{"model": "a", "stream": true, "x": {"maximum": 123456789012345678901234}}'
    copy = copier.copy("r", "/v1/chat/completions", orjson.loads(source), "id", source)
    assert copy is not None
    copy.release()
    await until(lambda: copier.in_flight("r") == 0)
    assert sent == [b'{"model":"served-s","x":{"maximum":123456789012345678901234}}']
