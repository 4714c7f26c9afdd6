"""The objects one app instance shares across requests, built by the lifespan."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.auth.keys import KeyStore
from gateway.background import BackgroundTasks
from gateway.config.settings import Settings
from gateway.http.status_feed import StatusFeed
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.worker_metrics import WorkerMetrics
from gateway.pipeline.passthrough import PassthroughService
from gateway.pipeline.responses import ResponsesService
from gateway.pipeline.service import CompletionService
from gateway.pool.engine_pool import EnginePool
from gateway.pool.model_info import EngineModels
from gateway.pool.readiness import Readiness
from gateway.rollouts.controller import RolloutController


class ModelCatalog:
    """``/v1/models`` and ``/v1/models/{id}`` in OpenAI's shape, with what the engines
    report of each model (:class:`EngineModels`: ``max_model_len``, ``root``,
    ``parent``). The full list's body is rebuilt only when the pool's model set or
    the engines' facts change.

    A rollout's name is listed (after the models) while any of its variants is served;
    its card carries the smallest ``max_model_len`` of those variants (a request must
    fit whichever answers it) and nothing of the variants themselves."""

    def __init__(
        self,
        pool: EnginePool,
        info: EngineModels | None = None,
        rollouts: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self._pool = pool
        self._info = info
        self._rollouts = dict(rollouts or {})
        self._created = int(time.time())
        self._built_for: tuple[tuple[str, ...], int] | None = None
        self._body = b""

    def list_body(self, allowed: frozenset[str] | None = None) -> bytes:
        """Every served model, or only those in ``allowed``."""
        models = self._pool.models()
        if self._rollouts:
            models = (*models, *(r for r in self._rollouts if self._served_variants(r, models)))
        if allowed is not None:
            return self._encode(m for m in models if m in allowed)
        built_for = (models, self._info.version if self._info is not None else 0)
        if built_for != self._built_for:
            self._built_for = built_for
            self._body = self._encode(models)
        return self._body

    def detail_body(self, model: str, allowed: frozenset[str] | None = None) -> bytes | None:
        """One model's object; None when it is not served, or not to a caller limited
        to ``allowed`` (who must not learn that it exists)."""
        if allowed is not None and model not in allowed:
            return None
        if model in self._rollouts:
            if not self._served_variants(model, self._pool.models()):
                return None
        elif not self._pool.has_model(model):
            return None
        return orjson.dumps(self._card(model))

    def _served_variants(self, rollout: str, models: Sequence[str]) -> list[str]:
        return [v for v in self._rollouts[rollout] if v in models]

    def _encode(self, models: Iterable[str]) -> bytes:
        return orjson.dumps({"object": "list", "data": [self._card(m) for m in models]})

    def _card(self, model: str) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": model,
            "object": "model",
            "created": self._created,
            "owned_by": "vgate",
        }
        if model in self._rollouts:
            lengths = [
                facts.max_model_len
                for variant in self._rollouts[model]
                if self._info is not None
                and (facts := self._info.facts.get(variant)) is not None
                and facts.max_model_len is not None
            ]
            if lengths:
                card["max_model_len"] = min(lengths)
            return card
        facts = self._info.facts.get(model) if self._info is not None else None
        if facts is not None:
            card.update(facts.fields())
        return card


@dataclass(frozen=True)
class AppState:
    settings: Settings
    pool: EnginePool
    metrics: GatewayMetrics
    service: CompletionService
    keys: KeyStore | None
    background: BackgroundTasks
    readiness: Readiness
    passthrough: PassthroughService | None = None
    """vLLM's model-scoped routes (None: not served)."""
    model_info: EngineModels | None = None
    """What the engines report of their models, kept current in the background."""
    responses: ResponsesService | None = None
    """The Responses API (None: not served)."""
    rollout_control: RolloutController | None = None
    """The rollout controller behind ``/admin/rollouts`` (None: no ``rollouts:``)."""
    skip_engine_drains: Callable[[], None] | None = None
    """Ends the managed engines' drains at once (a second stop signal); None: this
    gateway launches no engines."""
    worker_metrics: WorkerMetrics | None = None
    """Every worker's figures for ``/metrics`` (None: ``server.workers: 1``)."""
    catalog: ModelCatalog = field(init=False)
    status: StatusFeed = field(init=False)
    """The live status page's snapshots (``/status``)."""

    def __post_init__(self) -> None:
        status = StatusFeed(self.settings, self.pool, self.metrics, lambda: self.rollout_control)
        object.__setattr__(self, "status", status)
        rollouts = {r.model: [v.model for v in r.variants] for r in self.settings.rollouts}
        catalog = ModelCatalog(self.pool, self.model_info, rollouts)
        object.__setattr__(self, "catalog", catalog)
