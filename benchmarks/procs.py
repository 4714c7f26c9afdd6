"""Child processes of a benchmark: pinned to a CPU, in their own process group.

Every process is started in a new session (so its workers share its process
group) and registered with a :class:`Processes` stack, which signals the
whole group on exit: normal return, an exception, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin_self(cpu: int) -> bool:
    """Pin this process to ``cpu``; False (and unpinned) where that CPU does not exist."""
    try:
        os.sched_setaffinity(0, {cpu})
    except (OSError, AttributeError):
        return False
    return True


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds used so far by the live processes of a process group."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields[2] is pgrp; 11/12 are utime/stime
            total += int(fields[11]) + int(fields[12])
    return total / _CLK_TCK


def group_pids(pgid: int) -> list[int]:
    """The live processes of a process group (a gateway's supervisor and its workers)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of ``pids`` together (``/proc/PID/statm``); gone processes count 0.

    Takes the pids rather than a group so that a sampler can look them up once and
    read a few small files per sample instead of scanning ``/proc``.
    """
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total * _PAGE


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """Per CPU (``cpu0``, ``cpu1``, ...): (busy, total) jiffies since boot.

    Busy is user + nice + system + steal: what processes (or, for steal, the
    hypervisor's other guests) took. Interrupt time is left out because
    process CPU times leave it out too, so "ours" and "busy" compare.
    """
    ticks = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name != "cpu":
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy = user + nice + system + steal
            ticks[name] = (busy, busy + idle + iowait + irq + softirq)
    return ticks


def cpu_busy(seconds: float = 1.0) -> dict[str, float]:
    """How busy each CPU was over the next ``seconds``: other work skews a benchmark."""
    try:
        before = cpu_ticks()
        time.sleep(seconds)
        after = cpu_ticks()
    except (OSError, ValueError):
        return {}
    return busy_between(before, after)


def busy_between(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """Per CPU, the busy share between two :func:`cpu_ticks` readings."""
    busy = {}
    for name, (b1, t1) in after.items():
        b0, t0 = before.get(name, (b1, t1))
        busy[name] = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if this process dies, even by SIGKILL (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the process-group cleanup still runs on every normal exit


class Processes:
    """A stack of started process groups; leaving it (however) stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._started: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._previous: dict[int, object] = {}

    def start(self, name: str, argv: list[str], cpu: int | str | None) -> subprocess.Popen[bytes]:
        """Start ``argv`` (under ``taskset -c cpu`` when given, e.g. ``1`` or ``"0,1"``) in
        its own process group."""
        self._log_dir.mkdir(parents=True, exist_ok=True)
        command = ["taskset", "-c", str(cpu), *argv] if cpu is not None else argv
        with open(self._log_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._started.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self._log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(
        self, name: str, proc: subprocess.Popen[bytes], url: str, timeout_s: float
    ) -> None:
        """Poll ``url`` until it answers 200; raise if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{name} not healthy at {url} after {timeout_s:.0f} s:\n{self.log_tail(name)}"
        )

    def stop_all(self) -> None:
        """SIGTERM every group, newest first; SIGKILL what is left after a few seconds."""
        for _, proc in reversed(self._started):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for _, proc in reversed(self._started):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
            proc.wait()
        self._started.clear()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Treat SIGTERM/SIGHUP as Ctrl-C.

        While an event loop runs, asyncio's Runner owns SIGINT and cancels the
        run (an exception raised here would only be logged by the loop's
        callback); outside one, the default handler raises KeyboardInterrupt.
        """
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt(f"signal {signum}")

    def __enter__(self) -> Processes:
        # Ctrl-C must interrupt even where the shell started us with SIGINT ignored.
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._previous[sig] = signal.signal(sig, self._on_sigterm)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Ignore further Ctrl-C while cleaning up, so that the cleanup always finishes.
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_all()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
