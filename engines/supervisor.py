"""The engine pool: every replica of every managed model, kept alive and published.

Each replica is an :class:`EngineSlot` running one task through this cycle::

    spawn → starting → ready ⇄ (watch: process alive, /health, 1-token probe)
      ↑                  │ exited / unhealthy / stuck
      └── backoff ←── restarting ──(restart budget spent)──→ failed

Only ``ready`` engines are routable; every state change is published to the
registry at once, and all records are re-published each heartbeat so a
Redis-backed registry can expire the engines of a supervisor that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from redis.exceptions import RedisError

from engines.process import EngineProcess, EngineStartError, LaunchPlan, build_argv, build_env
from engines.registry import EngineRecord, EngineRegistry, EngineState
from engines.spec import EngineSpec
from engines.stats import EngineStats

log = logging.getLogger("vgate.engines")
Progress = Callable[[str], None]
_UNHEALTHY_AFTER = 3  # consecutive failed /health checks


@dataclass(frozen=True)
class Deployment:
    """A model to serve: its spec and where its weights and interpreter are."""

    model: str
    spec: EngineSpec
    model_path: str
    python: str
    log_dir: Path
    advertise_host: str | None = None
    """The host gateways reach the engine at, when it differs from the bind address
    (``host: 0.0.0.0`` in a container: the pod or host IP)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class RestartBudget:
    """At most ``limit`` restarts in any sliding window of ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float]) -> None:
        self._limit = limit
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()

    def take(self) -> bool:
        now = self._clock()
        while self._times and now - self._times[0] > self._window_s:
            self._times.popleft()
        if len(self._times) >= self._limit:
            return False
        self._times.append(now)
        return True

    @property
    def used(self) -> int:
        return len(self._times)


class EngineSlot:
    """One replica: owns its current process and its registry record."""

    def __init__(
        self,
        deployment: Deployment,
        replica: int,
        supervisor_id: str,
        registry: EngineRegistry,
        session: aiohttp.ClientSession,
        progress: Progress,
    ) -> None:
        self.deployment = deployment
        self.replica = replica
        self.engine_id = f"{supervisor_id}/{deployment.model}/{replica}"
        self._supervisor_id = supervisor_id
        self._registry = registry
        self._session = session
        self._progress = progress
        spec = deployment.spec
        self._budget = RestartBudget(
            spec.restart.max_restarts, spec.restart.window_s, time.monotonic
        )
        self.process: EngineProcess | None = None
        self.record: EngineRecord | None = None
        self.restarts = 0
        self.ready = asyncio.Event()
        self.failed = asyncio.Event()

    async def run(self) -> None:
        """Keep this replica running until cancelled or out of restarts."""
        spec = self.deployment.spec
        while True:
            reason = await self._run_once()
            if not self._budget.take():
                self._progress(f"{self.engine_id}: {reason}; restart budget spent, giving up")
                await self._publish("failed")
                self.failed.set()
                return
            self.restarts += 1
            delay = spec.restart.backoff(self._budget.used)
            self._progress(f"{self.engine_id}: {reason}; restart {self.restarts} in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _run_once(self) -> str:
        """Start one process and watch it; return why it had to go."""
        process = self._spawn()
        await self._publish("starting")
        try:
            await process.wait_ready(
                self._session, self.deployment.spec.health.startup_timeout_s, self._progress
            )
        except EngineStartError as exc:
            log.warning("%s failed to start: %s", self.engine_id, exc)
            reason = "failed to start"
        else:
            await self._publish("ready")
            self._progress(f"{self.engine_id}: ready at {process.plan.url}")
            self.ready.set()
            reason = await self._watch(process)
        await self._publish("restarting")
        self.ready.clear()
        await process.stop(self.deployment.spec.health.stop_timeout_s)
        return reason

    def _spawn(self) -> EngineProcess:
        d = self.deployment
        port = free_port(d.spec.host)
        plan = LaunchPlan(
            argv=build_argv(d.spec, d.python, d.model_path, d.model, port),
            env=build_env(d.spec, self.replica),
            url=f"http://{d.advertise_host or d.spec.host}:{port}",
            served_name=d.model,
            log_path=d.log_dir / f"{d.model}-{self.replica}.log",
        )
        self.process = EngineProcess(plan)
        self.process.spawn()
        return self.process

    async def _watch(self, process: EngineProcess) -> str:
        health = self.deployment.spec.health
        failures = 0
        next_probe = time.monotonic() + health.probe_interval_s
        while True:
            await asyncio.sleep(health.interval_s)
            code = process.exit_code()
            if code is not None:
                return f"exited with {code}"
            failures = 0 if await process.healthy(self._session) else failures + 1
            if failures >= _UNHEALTHY_AFTER:
                return "stopped answering /health"
            if time.monotonic() >= next_probe:
                if not await process.probe_completion(self._session, health.probe_timeout_s):
                    return "stuck: a 1-token completion did not finish"
                next_probe = time.monotonic() + health.probe_interval_s

    async def drain_and_stop(self) -> None:
        """Stop taking traffic, wait for running requests (up to the drain timeout), stop."""
        process = self.process
        if process is None:
            return
        await self._publish("draining")
        deadline = time.monotonic() + self.deployment.spec.health.drain_timeout_s
        while process.alive and time.monotonic() < deadline:
            if await self._running(process) == 0:
                break
            await asyncio.sleep(0.25)
        await process.stop(self.deployment.spec.health.stop_timeout_s)
        await self._publish("stopped")

    async def heartbeat(self) -> None:
        if self.record is not None:
            await self._registry.publish(self.record)

    async def _running(self, process: EngineProcess) -> float:
        try:
            async with self._session.get(
                f"{process.plan.url}/metrics", timeout=aiohttp.ClientTimeout(total=2)
            ) as response:
                return EngineStats.from_text(await response.text()).running
        except (TimeoutError, aiohttp.ClientError):
            return 0.0

    async def _publish(self, state: EngineState) -> None:
        process = self.process
        url = process.plan.url if process is not None else ""
        started = process.started_at if process is not None else 0.0
        base = EngineRecord(
            self.engine_id, self.deployment.model, url, state, started, self._supervisor_id
        )
        self.record = replace(base, restarts=self.restarts)
        try:
            await self._registry.publish(self.record)
        except (RedisError, OSError) as exc:  # Redis down: the next heartbeat retries
            log.warning("could not publish %s as %s: %s", self.engine_id, state, exc)


class EngineSupervisor:
    """Runs every replica of every deployment; publishes them; stops them in order."""

    def __init__(
        self,
        deployments: Sequence[Deployment],
        registry: EngineRegistry,
        progress: Progress = print,
        heartbeat_s: float = 2.0,
        supervisor_id: str | None = None,
    ) -> None:
        self._deployments = tuple(deployments)
        self._registry = registry
        self._progress = progress
        self._heartbeat_s = heartbeat_s
        self.supervisor_id = supervisor_id or f"sup-{uuid.uuid4().hex[:8]}"
        self.slots: list[EngineSlot] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Spawn every replica and return at once; readiness arrives in the background."""
        self._session = aiohttp.ClientSession()
        for deployment in self._deployments:
            for replica in range(deployment.spec.replicas):
                slot = EngineSlot(
                    deployment, replica, self.supervisor_id, self._registry, self._session,
                    self._progress,
                )  # fmt: skip
                self.slots.append(slot)
                self._tasks.append(asyncio.create_task(slot.run(), name=slot.engine_id))
        self._tasks.append(asyncio.create_task(self._heartbeats(), name="vgate-heartbeat"))

    async def wait_ready(self) -> bool:
        """Wait until every replica is ready (True) or one has failed for good (False)."""
        for slot in self.slots:
            ready = asyncio.create_task(slot.ready.wait())
            failed = asyncio.create_task(slot.failed.wait())
            await asyncio.wait({ready, failed}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            failed.cancel()
            if slot.failed.is_set():
                return False
        return True

    async def stop(self) -> None:
        """Cancel the watch loops, then drain and stop every engine."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.gather(*(slot.drain_and_stop() for slot in self.slots))
        for slot in self.slots:
            with contextlib.suppress(RedisError, OSError):
                await self._registry.remove(slot.engine_id)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            for slot in self.slots:
                try:
                    await slot.heartbeat()
                except (RedisError, OSError) as exc:  # Redis down: it may come back
                    log.warning("heartbeat for %s failed: %s", slot.engine_id, exc)
