"""Where a gateway's engines come from: static URLs, its own supervisor, or a shared registry.

:class:`RegistryWatcher` keeps :class:`EnginePool` equal to "static endpoints
plus the registry's ready engines" for every model, so routing and
``/v1/models`` follow engines live: one that dies or restarts leaves the pool,
and comes back when it is ready again. It is one step of the ``registry-watch``
background task (:mod:`gateway.background`), which survives its failures.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from redis.exceptions import RedisError

from engines.models.prepare import default_cache_dir, default_engine_python, prepare_default_model
from engines.registry import EngineRegistry, InProcessRegistry, RedisRegistry
from engines.spec import DEFAULT_SOURCE
from engines.supervisor import Deployment
from gateway.background import RepeatedLog
from gateway.config.settings import Settings
from gateway.pool.engine_pool import EnginePool

log = logging.getLogger("vgate.engines")


def build_registry(settings: Settings) -> EngineRegistry:
    """Redis when configured (engines may run elsewhere), else in this process.

    Records the registry cannot decode are skipped (and counted in its
    ``skipped_records``), never fatal to the watcher."""
    if settings.redis.url:
        return RedisRegistry(
            settings.redis.url, settings.engines.registry_ttl_s, settings.redis.timeout_s
        )
    return InProcessRegistry()


def build_deployments(settings: Settings) -> list[Deployment]:
    """One deployment per model with an ``engine:`` spec; prepares the default model if named."""
    engines = settings.engines
    python = engines.python or str(default_engine_python())
    log_dir = Path(engines.log_dir).expanduser()
    deployments: list[Deployment] = []
    for model in settings.models:
        spec = model.engine
        if spec is None:
            continue
        path = spec.source
        if spec.kind == "vllm" and spec.source == DEFAULT_SOURCE:
            cache = Path(engines.model_cache).expanduser() if engines.model_cache else None
            path = str(
                prepare_default_model(cache or default_cache_dir(), Path(python), progress=log.info)
            )
        deployments.append(Deployment(model.served_name, spec, path, spec.python or python,
                                      log_dir, engines.advertise_host))  # fmt: skip
    return deployments


class RegistryWatcher:
    """Reads the registry and rewrites each model's engines in the pool (run periodically
    as :meth:`refresh_or_keep`)."""

    def __init__(
        self,
        registry: EngineRegistry,
        pool: EnginePool,
        static: Mapping[str, Sequence[str]],
        aliases: Mapping[str, str],
    ) -> None:
        self._registry = registry
        self._pool = pool
        self._static = {model: tuple(urls) for model, urls in static.items()}
        self._aliases = dict(aliases)  # served name -> client-facing name
        self._outage = RepeatedLog(log)
        self.unrouted = 0
        """Engines the registry held at the last read that are not in the pool: not
        routable now (starting, restarting, draining, failed) but not stopped either.
        Readiness counts them as known (:mod:`gateway.pool.readiness`)."""

    async def refresh(self) -> None:
        """Read the registry once and apply it to the pool."""
        records = await self._registry.records()
        ready: dict[str, list[str]] = {}
        for record in records:
            if record.routable:
                model = self._aliases.get(record.model, record.model)
                ready.setdefault(model, []).append(record.url)
        for model in self._static.keys() | ready.keys():
            self._pool.set_endpoints(model, (*self._static.get(model, ()), *ready.get(model, ())))
        for model in self._pool.models():
            if model not in self._static and model not in ready:
                self._pool.remove_model(model)
        for record in records:
            self._pool.set_restarts(record.url, record.restarts)
        self.unrouted = sum(1 for r in records if not r.routable and r.state != "stopped")

    async def refresh_or_keep(self) -> None:
        """:meth:`refresh`, except that an unreachable Redis keeps the last view (an
        expected outage, logged as a warning: the first failure, then at most once a
        minute with a count, and once when it ends); anything else raises to the task
        runner."""
        try:
            await self.refresh()
        except (RedisError, OSError) as exc:
            self._outage.failed(f"engine registry unreadable, keeping the last view: {exc}")
        else:
            self._outage.recovered("engine registry readable again")
