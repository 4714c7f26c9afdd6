"""A watcher that outlives vgate, so that no engine outlives it: the engines' last resort.

An engine gets SIGTERM from Linux when vgate dies, even by SIGKILL (the parent-death
signal, :mod:`engines.process`), but nothing followed that up: an engine that ignores
SIGTERM or cannot act on it soon (a Python signal handler waits for a long C call: a
CUDA init, a compile), or that leaves processes of its group behind, outlived vgate,
holding its port and its GPU memory; the next vgate's engines then ran out of memory.
Only a process that is still there after vgate can escalate, so:

the supervisor starts one guardian (``python -m engines.guardian GRACE_S``), in its own
session (a signal to vgate's process group or terminal does not reach it), reading a
pipe from vgate: ``+<pgid>`` when an engine's process group starts, ``-<pgid>`` once
vgate has reaped it. When the pipe ends, which happens however vgate exits, the
guardian sends SIGTERM to every group still listed, SIGKILL to those still there
``GRACE_S`` later (the engines' longest ``stop_timeout_s``), and exits. A clean stop has
forgotten every engine by then: the guardian exits having done nothing.

The cost is one small process per supervisor and a line written per engine start and
stop; nothing per request.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger("vgate.engines")

_POLL_S = 0.05
_CLOSE_WAIT_S = 5.0


class EngineGuardian:
    """vgate's end of the guardian: tells it which engine process groups are alive."""

    def __init__(self, grace_s: float) -> None:
        """Start the guardian process (SIGKILL for a group ``grace_s`` after SIGTERM)."""
        self._process = subprocess.Popen(
            [sys.executable, "-m", "engines.guardian", repr(grace_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._broken = False

    def watch(self, pgid: int) -> None:
        """An engine's process group started: the guardian ends it if vgate dies."""
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """The group's leader was reaped: nothing of it for the guardian to end."""
        self._send(f"-{pgid}\n")

    async def close(self) -> None:
        """End the pipe (the guardian ends what is still listed) and reap the guardian."""
        import asyncio

        stdin = self._process.stdin
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
        deadline = time.monotonic() + _CLOSE_WAIT_S
        while self._process.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_POLL_S)

    def _send(self, line: str) -> None:
        stdin = self._process.stdin
        if stdin is None or self._broken:
            return
        try:
            stdin.write(line.encode())
            stdin.flush()
        except OSError as exc:  # the guardian died (OOM killer?): the death signal remains
            self._broken = True
            log.warning("the engine guardian is gone (%r): engines rely on SIGTERM alone", exc)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the group id was reused by another user's process
        return False
    return True


def _signal(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def end_groups(groups: set[int], grace_s: float) -> list[int]:
    """SIGTERM every group, SIGKILL those still there after ``grace_s``; return those."""
    for pgid in groups:
        _signal(pgid, signal.SIGTERM)
        _signal(pgid, signal.SIGCONT)  # a stopped (SIGSTOP) engine acts on it now
    deadline = time.monotonic() + grace_s
    alive = {pgid for pgid in groups if _group_alive(pgid)}
    while alive and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        alive = {pgid for pgid in alive if _group_alive(pgid)}
    for pgid in alive:
        _signal(pgid, signal.SIGKILL)
    return sorted(alive)


def main(argv: list[str]) -> int:
    """The guardian process: read the pipe until it ends, then end what is listed."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # only the pipe's end counts
    grace_s = float(argv[0])
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
    if groups:
        killed = end_groups(groups, grace_s)
        with contextlib.suppress(OSError):
            print(
                f"vgate engine guardian: vgate exited with {len(groups)} engine group(s) "
                f"running; SIGTERM sent, SIGKILL after {grace_s:g} s to {killed or 'none'}",
                file=sys.stderr,
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
