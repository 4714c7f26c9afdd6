"""The Responses service as the app assembles it, over :class:`FakeUpstream` and the
in-memory response store: for tests of what create stores and refuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.auth.authenticator import build_authenticator
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.backends.memory.responses import MemoryResponseStore
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.assembly import build_forwarder, build_responses_service
from gateway.pipeline.responses import ResponsesService
from gateway.pipeline.results import Answer
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.admission import Admission
from gateway.upstream.fake import FakeRequest, FakeUpstream, Scripted

MODEL = "m"
KEY = "sk-test-0123456789"


@dataclass
class ResponsesWorld:
    service: ResponsesService
    upstream: FakeUpstream
    store: MemoryResponseStore
    sent: list[dict[str, Any]]
    """The bodies the engine got."""
    admission: Admission


def engine_response(request: FakeRequest, **extra: Any) -> dict[str, Any]:
    """What vLLM answers: a completed response named after the request's ``request_id``."""
    body = request.json()
    assert isinstance(body, dict)
    return {
        "id": body["request_id"],
        "object": "response",
        "status": "completed",
        "metadata": body.get("metadata"),
        "output": [
            {
                "id": "msg_out",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hi"}],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
        **extra,
    }


def responses_world(
    answer: Callable[[FakeRequest], dict[str, Any]] = engine_response,
    key_limits: dict[str, int] | None = None,
    store: MemoryResponseStore | None = None,
    responses: dict[str, Any] | None = None,
    **server: Any,
) -> ResponsesWorld:
    """One engine answering with ``answer``; one key (with ``key_limits``: rpm, ...);
    ``store`` (else a 16 MiB memory store); ``responses`` and ``server`` settings as
    given."""
    key = {"name": "team", "key": KEY, **(key_limits or {})}
    config = Settings.model_validate(
        {
            "models": [{"name": MODEL, "endpoints": ["http://engine-a"]}],
            "auth": {"enabled": True, "keys": [key]},
            "server": server,
            "responses": responses or {},
        }
    )
    metrics = GatewayMetrics()
    pool = EnginePool({m.name: m.endpoints for m in config.models})
    sent: list[dict[str, Any]] = []

    def handler(request: FakeRequest) -> Scripted:
        body = request.json()
        assert isinstance(body, dict)
        sent.append(body)
        return Scripted(body=orjson.dumps(answer(request)))

    upstream = FakeUpstream(handler)
    admission = Admission(MemoryLimiter(), config.ratelimit, metrics)
    store = MemoryResponseStore(1 << 24) if store is None else store
    service = build_responses_service(
        config,
        pool,
        build_forwarder(config, pool, upstream, metrics),
        metrics,
        build_authenticator(config.auth, None),
        admission,
        store,
    )
    return ResponsesWorld(service, upstream, store, sent, admission)


async def create_answer(world: Any, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/responses`` with ``body`` as the world's key; the answer's JSON."""
    principal = await world.service.caller(f"Bearer {KEY}")
    result = await world.service.create(orjson.dumps(body), principal, "req-1", None)
    assert isinstance(result, Answer)
    answer: dict[str, Any] = orjson.loads(result.body)
    return answer
