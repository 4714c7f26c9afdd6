"""The engine pool: every replica of every managed model, kept alive and published.

Each replica is an :class:`EngineSlot` running one task through this cycle::

    spawn → starting → ready ⇄ (watch: process alive, /health, work probe by task)
      ↑                  │ exited / unhealthy / stuck
      └── backoff ←── restarting ──(restart budget spent)──→ failed

Only ``ready`` engines are routable; every state change is published to the
registry at once, and all records are re-published each heartbeat so a
Redis-backed registry can expire the engines of a supervisor that died.

A start that cannot succeed is reported at once, cause and fix in one log line
(:mod:`engines.diagnosis`): a vLLM engine is checked before each spawn, and an
engine that exits while starting is classified from its log. When retrying cannot
help (no vLLM, no model, bad arguments) the replica fails for good at once, without
spending its restart budget. One replica's failure, even an unexpected exception,
never stops the others, nor their draining at shutdown: every stop step has a bound.
Should the supervisor die without stopping its engines, its guardian ends them
(:mod:`engines.guardian`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from engines.deployment import Deployment, free_port, log_path, preflight_deployment
from engines.diagnosis import StartProblem, classify_exit, spawn_problem
from engines.guardian import EngineGuardian
from engines.liveness import check_work, read_stats
from engines.process import (
    STOP_OVERRUN_S,
    EngineProcess,
    EngineStartError,
    LaunchPlan,
    build_argv,
    build_env,
    probe_request,
)
from engines.registry import EngineRecord, EngineRegistry, EngineState
from engines.restart_budget import RestartBudget

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Deployment", "EngineSlot", "EngineSupervisor", "RestartBudget"]

log = logging.getLogger("vgate.engines")
Progress = Callable[[str], None]
_UNHEALTHY_AFTER = 3  # consecutive failed /health checks
_REGISTRY_CALL_S = 5.0  # bound on one registry call (a paused Redis must not stall a stop)
_STOP_MARGIN_S = STOP_OVERRUN_S + 2 * _REGISTRY_CALL_S + 3.0
"""A replica's whole drain-and-stop: drain + stop timeouts + this: the stop's own
overrun, the two registry calls (``draining``, ``stopped``) and the last load reading
(2 s), a second to spare. At 10 s a slow Redis cut the SIGTERM wait short."""


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
        guardian: EngineGuardian | None = None,
        hurry: asyncio.Event | None = None,
    ) -> None:
        self.deployment = deployment
        self._guardian = guardian
        self._hurry = hurry or asyncio.Event()
        """Set: a drain waits no more for running requests (a second stop signal)."""
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
        self.problem: StartProblem | None = None
        """The last reason a start failed (None: every start so far succeeded)."""
        self._api_key = deployment.api_key or secrets.token_urlsafe(32)
        """The key the engine demands: the model's, else one made for this slot (each
        supervisor start makes new slots, hence new keys). A generated key is published
        in the registry record, since no gateway could know it otherwise."""

    async def run(self) -> None:
        """Keep this replica running until cancelled, out of restarts, or unable to start.

        Never raises but CancelledError: an unexpected error fails this replica (logged
        with its traceback), so :meth:`EngineSupervisor.wait_ready` cannot wait forever."""
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("engine %s: supervision failed", self.engine_id)
            await self._fail(f"supervision failed ({type(exc).__name__}: {exc})")

    async def _run(self) -> None:
        spec = self.deployment.spec
        while True:
            reason = await self._run_once()
            problem = self.problem
            if problem is not None and problem.permanent:
                await self._fail(f"{reason}; retrying cannot help, giving up")
                return
            if not self._budget.take(after_failed_start=problem is not None):
                await self._fail(f"{reason}; restart budget spent, giving up")
                return
            self.restarts += 1
            delay = spec.restart.backoff(self._budget.used)
            self._progress(f"{self.engine_id}: {reason}; restart {self.restarts} in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _fail(self, message: str) -> None:
        try:
            self._progress(f"{self.engine_id}: {message}")
            await self._publish("failed")
        finally:
            self.failed.set()

    async def _run_once(self) -> str:
        """Start one process and watch it; return why it had to go."""
        started = await self._start()
        if isinstance(started, StartProblem):
            return self._report(started)
        process = started
        await self._publish("starting")
        try:
            await process.wait_ready(
                self._session, self.deployment.spec.health.startup_timeout_s, self._progress
            )
        except EngineStartError:
            reason = self._report(
                classify_exit(process.exit_code(), process.log_tail(), process.plan.log_path)
            )
        else:
            self.problem = None
            await self._publish("ready")
            self._progress(f"{self.engine_id}: ready at {process.plan.url}")
            self.ready.set()
            reason = await self._watch(process)
        await self._publish("restarting")
        self.ready.clear()
        await process.stop(self.deployment.spec.health.stop_timeout_s)
        return reason

    async def _start(self) -> EngineProcess | StartProblem:
        """The spawned process, or why it cannot (or could not) be spawned."""
        problem = await preflight_deployment(self.deployment)
        if problem is not None:
            return problem
        try:
            return self._spawn()
        except OSError as exc:
            return spawn_problem(exc, self.deployment.python, self.deployment.spec.host)

    def _report(self, problem: StartProblem) -> str:
        """Log why the start failed, with the fix, at once (one line, naming the engine)."""
        self.problem = problem
        log.error(
            "engine %s (model %s) failed to start: %s",
            self.engine_id, self.deployment.model, problem.describe(),
        )  # fmt: skip
        return f"failed to start: {problem.cause}"

    def _spawn(self) -> EngineProcess:
        d = self.deployment
        port = free_port(d.spec.host)
        plan = LaunchPlan(
            argv=build_argv(d.spec, d.python, d.model_path, d.model, port),
            env=build_env(d.spec, self.replica, api_key=self._api_key),
            url=f"http://{d.advertise_host or d.spec.host}:{port}",
            served_name=d.model,
            log_path=log_path(d, self.replica),
            api_key=self._api_key,
            runner=d.spec.runner,
            log_max_bytes=d.log_max_bytes,
            log_keep=d.log_keep,
        )
        self.process = EngineProcess(plan, self._guardian)
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
                check = await check_work(self._session, process, health.probe_timeout_s)
                if not check.works:
                    return f"stuck: a probe of {probe_request(process.plan.runner, '')[0]} failed"
                if check.busy_tokens:
                    tokens = f"{check.busy_tokens:.0f} tokens"
                    self._progress(f"{self.engine_id}: the stuck probe failed while the engine "
                                   f"generated {tokens}: busy, not stuck")  # fmt: skip
                next_probe = time.monotonic() + health.probe_interval_s

    async def drain_and_stop(self) -> None:
        """Stop taking traffic, wait for running requests (up to the drain timeout), stop."""
        process = self.process
        if process is None:
            return
        if not process.alive:  # failed or restarting: nothing to drain, its record stays
            await process.stop(self.deployment.spec.health.stop_timeout_s)
            return
        await self._publish("draining")
        deadline = time.monotonic() + self.deployment.spec.health.drain_timeout_s
        while process.alive and time.monotonic() < deadline and not self._hurry.is_set():
            if await self._running(process) == 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await self._hurry.wait()
        await process.stop(self.deployment.spec.health.stop_timeout_s)
        await self._publish("stopped")

    async def heartbeat(self) -> None:
        if self.record is not None:
            await self._registry.publish(self.record)

    async def _running(self, process: EngineProcess) -> float:
        stats = await read_stats(self._session, process)
        return stats.running if stats is not None else 0.0

    async def _publish(self, state: EngineState) -> None:
        process = self.process
        url = process.plan.url if process is not None else ""
        started = process.started_at if process is not None else 0.0
        base = EngineRecord(
            self.engine_id, self.deployment.model, url, state, started, self._supervisor_id
        )
        published_key = None if self.deployment.api_key else self._api_key
        adapters = self.deployment.spec.served_adapters()
        self.record = replace(
            base, restarts=self.restarts, adapters=adapters, api_key=published_key
        )
        try:
            async with asyncio.timeout(_REGISTRY_CALL_S):
                await self._registry.publish(self.record)
        except (RedisError, OSError, TimeoutError) as exc:  # the next heartbeat retries
            log.warning("could not publish %s as %s: %r", self.engine_id, state, exc)


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
        self._guardian: EngineGuardian | None = None
        self._hurry = asyncio.Event()

    async def start(self) -> None:
        """Spawn every replica and return at once; readiness arrives in the background."""
        import aiohttp  # only a gateway that supervises engines loads it (~9.6 MB resident)

        grace_s = max((d.spec.health.stop_timeout_s for d in self._deployments), default=1.0)
        try:
            self._guardian = EngineGuardian(grace_s)
        except OSError as exc:  # the death signal remains: engines still get SIGTERM
            log.warning("no engine guardian (%r): an engine ignoring SIGTERM could outlive "
                        "vgate", exc)  # fmt: skip
        self._session = aiohttp.ClientSession()
        for deployment in self._deployments:
            for replica in range(deployment.spec.replicas):
                slot = EngineSlot(
                    deployment, replica, self.supervisor_id, self._registry, self._session,
                    self._progress, self._guardian, self._hurry,
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

    def all_failed(self) -> bool:
        """True when every replica has failed for good (and there is at least one)."""
        return bool(self.slots) and all(slot.failed.is_set() for slot in self.slots)

    async def wait_all_failed(self) -> None:
        """Return once every replica has failed for good (never, while one can run)."""
        await asyncio.gather(*(slot.failed.wait() for slot in self.slots))

    async def stop(self) -> None:
        """Cancel the watch loops, then drain and stop every engine, all at once.

        Each replica's drain-and-stop has its own bound (its drain and stop timeouts plus
        a margin; past it the engine is killed), each registry call too, and one
        replica's error is logged, never allowed to skip the others."""
        for task in self._tasks:
            task.cancel()
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, outcome in zip(self._tasks, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("%s ended with %r", task.get_name(), outcome)
        self._tasks.clear()
        await asyncio.gather(*(self._stop_slot(slot) for slot in self.slots))
        for slot in self.slots:
            try:
                async with asyncio.timeout(_REGISTRY_CALL_S):
                    await self._registry.remove(slot.engine_id)
            except (RedisError, OSError, TimeoutError) as exc:  # its record expires anyway
                log.warning("could not remove %s from the registry: %r", slot.engine_id, exc)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._guardian is not None:  # every engine reaped (or killed): it has nothing to do
            await self._guardian.close()
            self._guardian = None

    def skip_drains(self) -> None:
        """Stop waiting for running requests (the operator signalled twice): engines
        draining now, or later in :meth:`stop`, stop at once (SIGTERM, then SIGKILL
        after ``stop_timeout_s``)."""
        self._hurry.set()

    async def _stop_slot(self, slot: EngineSlot) -> None:
        health = slot.deployment.spec.health
        bound = health.drain_timeout_s + health.stop_timeout_s + _STOP_MARGIN_S
        try:
            async with asyncio.timeout(bound):
                await slot.drain_and_stop()
        except Exception as exc:  # a timeout, or a bug: kill it and go on with the others
            log.error("stopping %s failed (%r); killing it", slot.engine_id, exc)
            if slot.process is not None:
                slot.process.kill()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_s)
            for slot in self.slots:
                try:
                    async with asyncio.timeout(_REGISTRY_CALL_S):
                        await slot.heartbeat()
                except (RedisError, OSError, TimeoutError) as exc:  # Redis down: it may return
                    log.warning("heartbeat for %s failed: %s", slot.engine_id, exc)
