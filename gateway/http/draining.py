"""The public server, which tells the app when its graceful shutdown (the drain) begins.

On SIGTERM uvicorn stops accepting, then lets the requests in progress run for up to
``server.shutdown_timeout_s``, and only then runs the app's lifespan exit. The app
learns nothing of the drain before that exit on its own, so the operator listener
(stopped by that exit) kept answering ``/ready`` with 200 all through it, and an
orchestrator kept sending clients to a gateway on its way out.

:class:`DrainingServer` calls ``on_drain`` the moment its shutdown begins, before it
stops accepting; :func:`readiness_drain` is the gateway's: readiness turns to 503
``{"status": "draining"}`` for good (:meth:`gateway.pool.readiness.Readiness.begin_drain`),
``/health`` (liveness) stays 200. It costs nothing per request: one call per process.

A second SIGINT or SIGTERM (Ctrl-C again) means "stop now": the requests in progress
are cut as at the end of ``server.shutdown_timeout_s`` (:mod:`gateway.http.shutdown_cut`)
and ``on_second_signal`` ends managed engines' drains (SIGTERM, SIGKILL after their
``stop_timeout_s``), as ``vgate engines run`` does. uvicorn alone forced its exit on a
second SIGINT only, and then skipped the app's shutdown altogether: the close steps ran
in tasks that ``asyncio.run`` was cancelling (a ``CancelledError`` traceback, engines
left to their death signal and the guardian), and a second signal during the engines'
drain changed nothing. Here the app's shutdown always runs, in order, only hurried,
and the process exits as after the first signal alone.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger("vgate.shutdown")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that calls ``on_drain()`` once, when its shutdown begins, and
    ``on_second_signal()`` on every stop signal after the first."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_drain: Callable[[], None],
        on_second_signal: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._on_second_signal = on_second_signal
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """uvicorn's signal handler (run between two bytecodes of the main thread: it
        only sets flags and hands the rest to the event loop)."""
        again = self.should_exit
        super().handle_exit(sig, frame)
        if again:
            self.force_exit = True  # SIGTERM too: uvicorn forces on a second SIGINT only
            # uvicorn raises every signal it caught again once it has served: the first
            # is enough (a second SIGINT raised KeyboardInterrupt out of the main task
            # itself, past asyncio's runner, which handles the first one cleanly).
            del self._captured_signals[1:]
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._hurry, sig)

    def _hurry(self, sig: int) -> None:
        name = signal.Signals(sig).name
        log.warning("second %s: stopping now, without waiting for requests in progress "
                    "or for engines to drain", name)  # fmt: skip
        for task in self.server_state.tasks:  # cut as at the end of the graceful period
            task.cancel(msg="Task cancelled, second stop signal")
        if self._on_second_signal is not None:
            try:
                self._on_second_signal()
            except Exception:  # the shutdown itself must go on
                log.exception("shutdown: hurrying the engines failed")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            self._on_drain()
        except Exception:  # the drain itself must go on
            log.exception("shutdown: marking the drain failed")
        await super().shutdown(sockets)
        closed = getattr(self.lifespan, "shutdown_event", None)
        if self.force_exit and isinstance(closed, asyncio.Event) and not closed.is_set():
            # uvicorn skips the app's shutdown on a forced exit: run its close steps
            # anyway (each is bounded, and managed engines' drains are cut short).
            await self.lifespan.shutdown()


def readiness_drain(app: Starlette) -> Callable[[], None]:
    """The drain hook of a gateway app: its readiness says "draining" from then on."""

    def begin() -> None:
        state = getattr(app.state, "vgate", None)  # absent when its start-up failed
        if state is not None:
            state.readiness.begin_drain()
            log.info("draining: /ready answers 503 until the process exits")

    return begin


def engines_now(app: Starlette) -> Callable[[], None]:
    """The second-signal hook of a gateway app: its managed engines stop draining."""

    def hurry() -> None:
        state = getattr(app.state, "vgate", None)  # absent when its start-up failed
        if state is not None and state.skip_engine_drains is not None:
            state.skip_engine_drains()

    return hurry
