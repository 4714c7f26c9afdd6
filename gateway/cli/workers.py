"""``server.workers > 1``: the worker processes behind one port, and their supervisor.

uvicorn's own supervisor (``uvicorn.run(..., workers=N)``) binds the port in the
parent, hands the socket to its workers and keeps its own copy open until every
worker has exited. During a graceful drain (SIGTERM, then up to
``server.shutdown_timeout_s``) the workers stop accepting, but the kernel still
completes new connections into the parent's copy, where nobody ever accepts them:
they hung until the process exited, where with one worker they are refused at once
(what a load balancer or a client's retry needs). Its workers also run uvicorn's
plain server, which cannot tell the app that the drain began
(:mod:`gateway.http.draining`).

:class:`WorkerSupervisor` keeps what uvicorn's did: it binds the port once in the
parent (so a port already taken fails the start, with the same startup log), starts
``server.workers`` spawned processes over that socket, forwards SIGTERM to each on
SIGINT or SIGTERM, starts a new worker in place of one that dies while serving (all
of them stop when one fails at start-up: it would fail the same way again) and
returns once all have exited. But when the drain begins it first closes its own copy
of the socket, so that once the workers have closed theirs a new connection is
refused. Each worker (:func:`serve_worker`) builds its own app and serves it with a
:class:`~gateway.http.draining.DrainingServer`; its metrics stay its own, but each is
told its place (:class:`~gateway.observability.worker_metrics.WorkerPlace`: its index
and the supervisor's private run directory, removed at the end), where the workers
serve their figures to each other so that ``/metrics`` on any of them shows all.

A worker that dies soon after it started is replaced after a growing pause
(:data:`QUICK_DEATH_S`); one that cannot drain is killed :data:`KILL_AFTER_S` past
the deadline; and each worker is told (SIGTERM) if the supervisor dies.

uvicorn's supervisor also answered SIGHUP by restarting every worker; this one drains
and stops on it, as on SIGTERM. uvicorn's also answered SIGTTIN/SIGTTOU (one worker
more or less) and killed a worker that stopped answering its pings; this one does
not: ``server.workers`` is the count, and a hung worker is left to its own deadlines
and to the orchestrator's liveness probe.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import select
import shutil
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from multiprocessing.context import SpawnProcess
from types import FrameType

import uvicorn
from uvicorn._subprocess import get_subprocess
from uvicorn.config import STARTUP_FAILURE

from gateway.http.draining import DrainingServer, readiness_drain
from gateway.observability.worker_metrics import WorkerPlace, make_run_dir

log = logging.getLogger("uvicorn.error")  # where uvicorn's supervisor logged the same lines

Target = Callable[[uvicorn.Config, WorkerPlace, list[socket.socket]], None]
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each drains the workers and ends the gateway (SIGHUP too: uvicorn's supervisor
restarted its workers on it; left to its default, it would kill this process and
leave the workers serving with no parent)."""
POLL_S = 0.5
"""How often the supervisor looks for a worker that died (a signal wakes it at once)."""
QUICK_DEATH_S = 10.0
"""A worker that dies sooner than this after it started is replaced only after a pause
that doubles with each such death in a row (1 s, 2 s, ... :data:`MAX_BACKOFF_S`): one
that cannot start (its config file broken since, say) is not restarted in a loop."""
MAX_BACKOFF_S = 60.0
KILL_AFTER_S = 10.0
"""How long past ``server.shutdown_timeout_s`` a worker may take to drain before it is
killed (SIGKILL): one that cannot run (stopped, hung) must not hold the gateway up."""
PR_SET_PDEATHSIG = 1


def serve_worker(config: uvicorn.Config, place: WorkerPlace, sockets: list[socket.socket]) -> None:
    """One worker process: its own app (from the environment), served on ``sockets``;
    ``place`` says where it serves its metrics to the other workers. It gets SIGTERM
    (and drains) if the supervisor dies without stopping it (SIGKILL, a crash): no
    worker serves on with no parent."""
    _terminate_with_parent()
    from gateway.app import app_from_environment

    app = app_from_environment(place)
    config.app, config.factory = app, False
    DrainingServer(config, readiness_drain(app)).run(sockets)


def _terminate_with_parent() -> None:
    """Linux: SIGTERM to this process when its parent dies (``prctl``); elsewhere,
    nothing. A parent already gone (it died before this ran) ends it at once."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent == 1:
        os.kill(os.getpid(), signal.SIGTERM)


class _Slot:
    """One worker's place: its process, when it started, its quick deaths in a row and,
    while it waits out a pause, when it may start again."""

    def __init__(self, place: WorkerPlace, process: SpawnProcess) -> None:
        self.place = place
        self.process = process
        self.started = time.monotonic()
        self.quick_deaths = 0
        self.restart_at: float | None = None


class WorkerSupervisor:
    """``count`` processes running ``target(config, sockets)`` over one bound port."""

    def __init__(
        self,
        config: uvicorn.Config,
        count: int,
        target: Target = serve_worker,
        *,
        poll_s: float = POLL_S,
        drain_s: float = 30.0,
    ) -> None:
        self._config = config
        self._count = count
        self._target = target
        self._poll_s = poll_s
        self._drain_s = drain_s  # server.shutdown_timeout_s
        self._stopping = False
        self._received: list[int] = []
        self._slots: list[_Slot] = []
        self._run_dir = ""
        self.failed_to_start = False
        """A worker failed at start-up (the gateway should exit with uvicorn's
        ``STARTUP_FAILURE``, as one worker does)."""

    def run(self) -> None:
        """Serve until SIGINT, SIGTERM or SIGHUP (or a worker that fails at start-up: then
        :attr:`failed_to_start`), then drain and return once every worker has exited."""
        listener = self._config.bind_socket()  # logs "Uvicorn running on ...", as before
        self._run_dir = make_run_dir(self._count)  # 0700: the metrics sockets
        wakeup, wake = socket.socketpair()
        for end in (wakeup, wake):
            end.setblocking(False)
        previous_fd = signal.set_wakeup_fd(wake.fileno())
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        log.info("Started parent process [%d]", os.getpid())
        try:
            places = [WorkerPlace(i, self._count, self._run_dir) for i in range(self._count)]
            self._slots = [_Slot(place, self._start(place, [listener])) for place in places]
            while not self._wait(wakeup):
                self._replace_dead([listener])
        finally:
            # Our copy first: once the workers close theirs, new connections are refused.
            listener.close()
            for sig in self._received[:1]:
                log.info("Received %s, draining the workers.", signal.Signals(sig).name)
            self._stop_workers()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(previous_fd)
            wakeup.close()
            wake.close()
            shutil.rmtree(self._run_dir, ignore_errors=True)
            log.info("Stopping parent process [%d]", os.getpid())

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        # Only a list append here: a signal can land anywhere in the main thread, and
        # taking a lock it holds (threading.Event.set in Event.wait) would deadlock it.
        # The wake-up socket (signal.set_wakeup_fd) ends the wait at once.
        self._received.append(sig)

    def _wait(self, wakeup: socket.socket) -> bool:
        """Wait up to ``poll_s`` for a signal; whether the gateway is stopping."""
        if not self._received and not self._stopping:
            readable, _, _ = select.select([wakeup], [], [], self._poll_s)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    wakeup.recv(64)
        return bool(self._received) or self._stopping

    def _start(self, place: WorkerPlace, sockets: list[socket.socket]) -> SpawnProcess:
        target = partial(self._target, self._config, place)
        process = get_subprocess(self._config, target, sockets)
        process.start()
        return process

    def _replace_dead(self, sockets: list[socket.socket]) -> None:
        now = time.monotonic()
        for slot in self._slots:
            if self._received or self._stopping:
                return
            worker = slot.process
            if slot.restart_at is not None:
                if now >= slot.restart_at:  # its pause is over
                    slot.restart_at = None
                    slot.process, slot.started = self._start(slot.place, sockets), now
                continue
            if worker.is_alive():
                continue
            worker.join()
            if worker.exitcode == STARTUP_FAILURE:
                log.error("Child process [%s] failed to start; stopping.", worker.pid)
                self.failed_to_start = True
                self._stopping = True
                return
            slot.quick_deaths = slot.quick_deaths + 1 if now - slot.started < QUICK_DEATH_S else 0
            if not slot.quick_deaths:
                log.warning("Child process [%s] died (exit %s); starting another.",
                            worker.pid, worker.exitcode)  # fmt: skip
                slot.process, slot.started = self._start(slot.place, sockets), now
                continue
            pause = min(MAX_BACKOFF_S, 2.0 ** (slot.quick_deaths - 1))
            log.error("Child process [%s] died (exit %s) %.1f s after it started; starting "
                      "another in %g s.", worker.pid, worker.exitcode, now - slot.started,
                      pause)  # fmt: skip
            slot.restart_at = now + pause

    def _stop_workers(self) -> None:
        """SIGTERM to every worker still running (each drains), then wait for them all;
        one still running :data:`KILL_AFTER_S` past ``shutdown_timeout_s`` is killed.

        SIGTERM whatever the parent got: a SIGINT from a terminal has reached the
        workers already, and a second SIGINT would make them quit without draining."""
        workers = [slot.process for slot in self._slots if slot.restart_at is None]
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                    os.kill(worker.pid, signal.SIGTERM)
                log.info("Terminated child process [%d]", worker.pid)
        deadline = time.monotonic() + self._drain_s + KILL_AFTER_S
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive() and worker.pid is not None:
                log.error("Child process [%d] still running %g s after its drain began; "
                          "killing it.", worker.pid, self._drain_s + KILL_AFTER_S)  # fmt: skip
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGKILL)
                worker.join()
