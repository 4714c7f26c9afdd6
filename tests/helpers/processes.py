"""Real child processes for tests: free ports, start-until-ready, and sure clean-up.

`run_process` starts any server (stub engine, gateway, redis-server, ...) in
its own process group, waits until a URL answers 200, and on exit stops the
whole group: SIGTERM first, SIGKILL for whatever is still alive after a grace
period. Output goes to a temporary log whose tail is shown if start-up fails;
with ``TEST_PROCESS_LOG_DIR`` set, to a file kept there instead (to read a child's
log after a failure that was not at start-up).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import IO

import httpx

_POLL_INTERVAL_S = 0.05
_LOG_TAIL_BYTES = 4000


class ProcessStartError(RuntimeError):
    """A child process exited or never became ready; the message holds its output."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; races are unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def run_process(
    argv: Sequence[str],
    ready_url: str | None,
    timeout: float = 30.0,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    stop_grace_s: float = 5.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` for the duration of the ``with`` block.

    Blocks until ``ready_url`` answers HTTP 200 (skipped when None), raising
    `ProcessStartError` if the process exits first or ``timeout`` seconds
    pass. ``env`` entries are added to the current environment. On exit the
    process group gets SIGTERM, then SIGKILL after ``stop_grace_s``.
    """
    full_env = {**os.environ, **(env or {})}
    with _log_file(argv) as log:
        process = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            if ready_url is not None:
                _wait_ready(process, ready_url, timeout, log)
            yield process
        finally:
            _stop_group(process, stop_grace_s)


def _log_file(argv: Sequence[str]) -> IO[bytes]:
    """Where a child's output goes: a temporary file, or one kept in ``TEST_PROCESS_LOG_DIR``."""
    keep_in = os.environ.get("TEST_PROCESS_LOG_DIR")
    if not keep_in:
        return tempfile.TemporaryFile()
    os.makedirs(keep_in, exist_ok=True)
    name = "-".join(os.path.basename(part) for part in argv[:4])[:80]
    return tempfile.NamedTemporaryFile(dir=keep_in, prefix=f"{name}-", suffix=".log", delete=False)


def _wait_ready(process: subprocess.Popen[bytes], url: str, timeout: float, log: IO[bytes]) -> None:
    """Poll ``url`` until it answers 200; raise with the log tail on exit or timeout."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while True:
            if process.poll() is not None:
                raise ProcessStartError(
                    f"{process.args!r} exited with {process.returncode} before ready:\n"
                    + _tail(log)
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(url).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{process.args!r} not ready at {url} after {timeout} s:\n" + _tail(log)
                )
            time.sleep(_POLL_INTERVAL_S)


def _tail(log: IO[bytes]) -> str:
    """The last few KB a child wrote to its log file."""
    log.seek(0, os.SEEK_END)
    size = log.tell()
    log.seek(max(0, size - _LOG_TAIL_BYTES))
    return log.read().decode("utf-8", "replace")


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the child's process group, then SIGKILL it if still running."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL follows
            process.wait(timeout=grace_s)
    # Grandchildren may outlive the leader; the group id is the leader's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
