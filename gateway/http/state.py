"""The objects one app instance shares across requests, built by the lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import orjson

from gateway.auth.keys import KeyStore
from gateway.background import BackgroundTasks
from gateway.config.settings import Settings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.responses import ResponsesService
from gateway.pipeline.service import CompletionService
from gateway.pool.engine_pool import EnginePool
from gateway.pool.readiness import Readiness


class ModelCatalog:
    """The ``/v1/models`` body, rebuilt only when the pool's model set changes."""

    def __init__(self, pool: EnginePool) -> None:
        self._pool = pool
        self._created = int(time.time())
        self._models: tuple[str, ...] | None = None
        self._body = b""

    def list_body(self, allowed: frozenset[str] | None = None) -> bytes:
        """Every served model, or only those in ``allowed``."""
        models = self._pool.models()
        if allowed is not None:
            return self._encode(tuple(m for m in models if m in allowed))
        if models != self._models:
            self._models = models
            self._body = self._encode(models)
        return self._body

    def _encode(self, models: tuple[str, ...]) -> bytes:
        return orjson.dumps(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": self._created, "owned_by": "vgate"}
                    for m in models
                ],
            }
        )


@dataclass(frozen=True)
class AppState:
    settings: Settings
    pool: EnginePool
    metrics: GatewayMetrics
    service: CompletionService
    keys: KeyStore | None
    background: BackgroundTasks
    readiness: Readiness
    responses: ResponsesService | None = None
    """The Responses API (None: not served)."""
    catalog: ModelCatalog = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "catalog", ModelCatalog(self.pool))
