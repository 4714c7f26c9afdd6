"""vLLM's model-scoped routes (``/tokenize``, ``/pooling``, ``/v1/score``, ...) write a
body anew for a renamed model or a clamped ``priority``: its integers beyond 64 bits
reach the engine exactly as written, not as orjson's floats."""

from __future__ import annotations

import orjson
import pytest

from gateway.auth.authenticator import build_authenticator
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.assembly import build_forwarder, build_passthrough_service
from gateway.pipeline.passthrough import SCOPED_ROUTES, ScopedMeta
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission
from gateway.upstream.fake import FakeRequest, FakeUpstream, Scripted

KEY = "sk-test-0123456789"
ROUTES = {route.path: route for route in SCOPED_ROUTES}
BIG = b'"x_schema": {"maximum": 18446744073709551616, "minimum": -9223372036854775809}'


@pytest.mark.parametrize(
    ("upstream_model", "extra"),
    [("org/served", b""), (None, b', "priority": -4')],
    ids=["renamed", "priority-clamped"],
)
async def test_a_rewritten_passthrough_body_carries_big_integers_exactly(
    upstream_model: str | None, extra: bytes
) -> None:
    settings = Settings.model_validate(
        {
            "models": [{"name": "m", "endpoints": ["http://e"], "upstream_model": upstream_model}],
            "auth": {"enabled": True, "keys": [{"name": "t", "key": KEY, "priority": 2}]},
        }
    )
    metrics = GatewayMetrics()
    pool = EnginePool({"m": ("http://e",)})
    sent: list[bytes] = []

    def engine(request: FakeRequest) -> Scripted:
        sent.append(request.body)
        return Scripted(body=b'{"tokens": [1, 2], "count": 2}')

    forwarder = build_forwarder(settings, pool, FakeUpstream(engine), metrics)
    service = build_passthrough_service(
        settings,
        pool,
        forwarder,
        metrics,
        build_authenticator(settings.auth, None),
        Admission(MemoryLimiter(), settings.ratelimit, metrics),
    )
    route = ROUTES["/tokenize"]
    principal = await service.caller(route, f"Bearer {KEY}")
    raw = b'{"model": "m", "prompt": "hi", ' + BIG + extra + b"}"
    await service.handle(route, raw, ScopedMeta("req-1"), principal)
    assert sent[0] != raw  # written anew
    assert orjson.loads(sent[0])["model"] == (upstream_model or "m")
    assert b'"maximum":18446744073709551616' in sent[0]
    assert b'"minimum":-9223372036854775809' in sent[0]
    assert b"e+" not in sent[0]
