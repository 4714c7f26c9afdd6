"""An exception injected into each of the gateway's five periodic tasks is logged with its
traceback, counted (``vgate_background_errors_total``) and survived: a later step does
its job. The real step callables run through the real runner, wired as ``gateway.app``
wires them; only a dependency of each is made to raise once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from engines.registry import EngineRecord, InProcessRegistry
from gateway.auth.authenticator import KeyDirectory
from gateway.auth.keys import KeyRecord, new_key
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.backends.memory.limiter import MemoryLimiter
from gateway.background import BackgroundTasks, Step
from gateway.config.sections import RateLimitSettings, StaticKey
from gateway.errors import StoreUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.pool.engine_pool import EnginePool
from gateway.pool.health import HealthMonitor, LoadScraper
from gateway.pool.sources import RegistryWatcher
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.limits import LimitScope

ENGINE = "http://127.0.0.1:9"
INTERVAL_S = 0.01


class Injected(RuntimeError):
    """The one failure each test makes a dependency raise."""


class Once:
    """Raises :class:`Injected` the first time it is called, then never again."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self) -> None:
        if not self.fired:
            self.fired = True
            raise Injected("injected into a background step")


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def survive(
    name: str, step: Step, done: Callable[[], bool], caplog: pytest.LogCaptureFixture
) -> None:
    """Run ``step`` as task ``name`` until ``done``; check the failure was logged and
    counted, and that the task is healthy again."""
    caplog.set_level(logging.ERROR, "vgate.background")
    tasks = BackgroundTasks()
    metrics = GatewayMetrics()
    metrics.watch_background(tasks.snapshot)
    task = await tasks.start(name, INTERVAL_S, step)
    try:
        await wait_until(done)
        await wait_until(lambda: tasks.snapshot()[name].last_success_age_s is not None)
    finally:
        await task.stop()
    [logged] = [r for r in caplog.records if r.name == "vgate.background"]
    assert name in logged.getMessage()
    assert logged.exc_info is not None and isinstance(logged.exc_info[1], Injected)
    health = tasks.snapshot()[name]
    assert health.errors == 1 and health.failures == 0
    assert f'vgate_background_errors_total{{task="{name}"}} 1.0' in metrics.render().decode()


class FlakyRegistry(InProcessRegistry):
    def __init__(self) -> None:
        super().__init__()
        self.once = Once()

    async def records(self) -> list[EngineRecord]:
        self.once()
        return await super().records()


async def test_registry_watch_survives(caplog: pytest.LogCaptureFixture) -> None:
    registry, pool = FlakyRegistry(), EnginePool({})
    await registry.publish(EngineRecord("e", "m", ENGINE, "ready", 1.0, "s"))
    watcher = RegistryWatcher(registry, pool, {}, {})
    await survive("registry-watch", watcher.refresh_or_keep, lambda: pool.models() == ("m",),
                  caplog)  # fmt: skip
    assert registry.once.fired


class DownRegistry(InProcessRegistry):
    """A registry that cannot be read while :attr:`down` (Redis unreachable)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def records(self) -> list[EngineRecord]:
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379.")
        return await super().records()


class FlakyKeyStore(MemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.once = Once()

    async def load_all(self) -> list[KeyRecord]:
        self.once()
        return await super().load_all()


async def test_key_refresh_survives(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyKeyStore()
    directory = KeyDirectory([], store)
    secret, record = new_key("made-elsewhere")
    await store.create(record)
    await survive("key-refresh", directory.refresh,
                  lambda: directory.known(f"Bearer {secret}") is not None, caplog)  # fmt: skip
    assert store.once.fired


class FlakyLimiter(MemoryLimiter):
    def __init__(self) -> None:
        super().__init__()
        self.once = Once()
        self.renewed = 0

    def renew(self, scopes: Sequence[LimitScope], request_id: str, lease_s: float) -> None:
        self.once()
        super().renew(scopes, request_id, lease_s)
        self.renewed += 1


async def test_lease_renewal_survives(caplog: pytest.LogCaptureFixture) -> None:
    limiter = FlakyLimiter()
    admission = Admission(limiter, RateLimitSettings(), GatewayMetrics())
    keys = KeyDirectory([StaticKey(name="k", key="sk-k-0123456789", max_concurrent=1)], None)
    principal = keys.known("Bearer sk-k-0123456789")
    assert principal is not None
    ticket = await admission.admit(principal.scopes("m"), {"model": "m", "max_tokens": 1})
    try:
        await survive("lease-renewal", admission.renew_leases, lambda: limiter.renewed >= 1,
                      caplog)  # fmt: skip
    finally:
        ticket.settle(0)
    assert limiter.once.fired


class FlakyEngines:
    """The upstream client's probe and scrape, each raising once."""

    def __init__(self) -> None:
        self.probe_once, self.fetch_once = Once(), Once()

    async def probe(self, url: str, headers: Mapping[str, str] | None = None) -> bool:
        self.probe_once()
        return False

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        self.fetch_once()
        return "vllm:num_requests_waiting 7\n"


async def test_health_probe_survives(caplog: pytest.LogCaptureFixture) -> None:
    pool, engines = EnginePool({"m": [ENGINE]}), FlakyEngines()
    monitor = HealthMonitor(pool, engines)
    await survive("health-probe", monitor.probe_all,
                  lambda: pool.health() == {"m": {ENGINE: False}}, caplog)  # fmt: skip
    assert engines.probe_once.fired


async def test_load_scrape_survives(caplog: pytest.LogCaptureFixture) -> None:
    pool, engines = EnginePool({"m": [ENGINE]}), FlakyEngines()
    scraper = LoadScraper(pool, engines)
    await survive("load-scrape", scraper.scrape_all,
                  lambda: pool.snapshot("m")[0].waiting == 7.0, caplog)  # fmt: skip
    assert engines.fetch_once.fired


class DownKeyStore(MemoryKeyStore):
    """A key store that cannot be read while :attr:`down` (Redis unreachable)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def version(self) -> str:
        if self.down:
            raise StoreUnavailable("redis is unreachable (test)")
        return await super().version()


async def test_key_refresh_reports_an_unreadable_store(caplog: pytest.LogCaptureFixture) -> None:
    """While the key store cannot be read the task keeps the last copy and its health
    says so (consecutive failures, the reason), with one warning and no traceback;
    healthy again at its first refresh once the store answers (before: it reported a
    success at every refresh of the outage)."""
    caplog.set_level(logging.INFO)
    store = DownKeyStore()
    secret, record = new_key("made-elsewhere")
    await store.create(record)
    directory = KeyDirectory([], store)
    tasks = BackgroundTasks()
    task = await tasks.start("key-refresh", INTERVAL_S, directory.poll, run_first=True)
    try:
        assert tasks.snapshot()["key-refresh"].problem is None
        store.down = True
        await wait_until(lambda: tasks.snapshot()["key-refresh"].failures >= 3)
        health = tasks.snapshot()["key-refresh"]
        assert health.problem is not None and "key store unreadable" in health.problem
        assert directory.known(f"Bearer {secret}") is not None  # the copy is kept
        store.down = False
        await wait_until(lambda: tasks.snapshot()["key-refresh"].failures == 0)
        assert tasks.snapshot()["key-refresh"].problem is None
    finally:
        await task.stop()
    warned = [r for r in caplog.records if "key store unreadable" in r.getMessage()]
    assert len(warned) == 1 and warned[0].exc_info is None
    assert not [r for r in caplog.records if r.exc_info is not None]


async def test_registry_watch_reports_an_unreadable_registry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While the engine registry cannot be read the task keeps the last view and its
    health says so, with one warning and no traceback; healthy again once it answers
    (before: a success at every read of the outage)."""
    caplog.set_level(logging.INFO)
    registry, pool = DownRegistry(), EnginePool({})
    await registry.publish(EngineRecord("e", "m", ENGINE, "ready", 1.0, "s"))
    watcher = RegistryWatcher(registry, pool, {}, {})
    tasks = BackgroundTasks()
    task = await tasks.start("registry-watch", INTERVAL_S, watcher.poll, run_first=True)
    try:
        assert tasks.snapshot()["registry-watch"].problem is None
        registry.down = True
        await wait_until(lambda: tasks.snapshot()["registry-watch"].failures >= 3)
        health = tasks.snapshot()["registry-watch"]
        assert health.problem is not None and "engine registry unreadable" in health.problem
        assert pool.models() == ("m",)  # the view is kept
        registry.down = False
        await wait_until(lambda: tasks.snapshot()["registry-watch"].failures == 0)
        assert tasks.snapshot()["registry-watch"].problem is None
    finally:
        await task.stop()
    warned = [r for r in caplog.records if "engine registry unreadable" in r.getMessage()]
    assert len(warned) == 1 and warned[0].exc_info is None
