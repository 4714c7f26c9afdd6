"""An engine's log file, bounded: written by a keeper process that rotates it by size.

An engine's output went straight into its log file, which nothing ever cut: an engine
that loops on a warning, or a chatty debug level, filled the disk (the models' disk,
often). The file cannot be cut under a writer that holds it open (a copy-and-truncate
loses what is written between the copy and the cut), so the engine no longer holds it:
its stdout and stderr are a pipe, read by a keeper (``python -m engines.engine_log PATH
MAX_BYTES KEEP``) that appends to ``PATH`` and, before a write would take it past
``MAX_BYTES``, renames it ``PATH.1`` (``PATH.1`` to ``PATH.2``, ..., up to ``KEEP``
files; the oldest is deleted) and starts a new one. It cuts at a line's end, so
every line is whole in one file (but one that goes on 64 KiB past the limit) and none
is lost: at most ``(KEEP + 1) * MAX_BYTES`` (and a line) per replica.

A process of its own rather than a thread of vgate's: the gateway that supervises
engines serves requests, and an engine printing megabytes a second must cost it
nothing. The keeper is in its own session (a Ctrl-C or a signal to vgate's group does
not reach it), ignores SIGINT, SIGTERM and SIGHUP, and exits when the pipe ends, that
is once every process of the engine has exited, having written everything: an engine
killed with SIGKILL (by vgate, or by the guardian after vgate's death) loses no line.
A keeper that cannot write any more (a full disk) drops what it reads, and says so
once on its stderr, rather than stall the engine on a full pipe; it tries again, on the
log opened anew, once :data:`RETRY_BYTES` more were dropped or :data:`RETRY_S` passed
(at the next read: no timer, no busy loop), and the first line it writes then says
how much was lost. Without :mod:`fcntl` (not a POSIX system) there is no keeper: the
engine writes its log itself, unrotated, as before the keeper existed, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger("vgate.engines")

_READ_SIZE = 256 * 1024
_LINE_SLACK = 64 * 1024  # how far past the limit a line begun in a full file may go
_PIPE_SIZE = 1024 * 1024  # what an engine may write ahead of the keeper (Linux' default max)
_F_SETPIPE_SZ = 1031
RETRY_BYTES = 4 * 1024 * 1024
"""Output dropped (after a write error) before the keeper tries writing again."""
RETRY_S = 10.0
"""Seconds after a write error before the keeper tries again (at its next read)."""


def open_private_log(path: Path) -> int:
    """A file descriptor appending to ``path``, a file only this user can read (0600) in a
    folder only this user can enter (0700); never through a symbolic link.

    The folder is created 0700; an existing one of this user's is tightened to 0700
    (engine logs may quote prompts), unless it is a shared sticky folder such as /tmp."""
    folder = path.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    mine = info.st_uid == os.geteuid() and not info.st_mode & stat.S_ISVTX
    if mine and stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file made before this version may be wider
    except OSError:
        os.close(fd)
        raise
    return fd


def rotated_path(path: Path, index: int) -> Path:
    """``PATH.index``: the ``index``-th most recent rotated file of ``path``."""
    return path.with_name(f"{path.name}.{index}")


def read_tail(path: Path, size: int) -> str:
    """The log's last ``size`` bytes, from the latest rotated file too when the current
    one is shorter (just rotated); empty when there is none."""
    tail = _file_tail(path, size)
    if len(tail) < size:
        tail = _file_tail(rotated_path(path, 1), size - len(tail)) + tail
    return tail.decode("utf-8", "replace")


def _file_tail(path: Path, size: int) -> bytes:
    if size <= 0:
        return b""
    try:
        with path.open("rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - size))
            return log.read()
    except OSError:
        return b""


class RotatingLog:
    """Appends to ``path``; rotates it at a line's end before it passes ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._keep = keep
        self._fd = open_private_log(path)
        self._size = os.fstat(self._fd).st_size
        self._mid_line = False

    def write(self, data: bytes) -> None:
        """Append ``data``; the next whole line goes to a new file once this one is full."""
        while data:
            room = self._max_bytes - self._size
            if len(data) <= room:
                self._append(data)
                return
            cut = data.rfind(b"\n", 0, max(room, 0)) + 1  # the whole lines that fit
            if cut == 0 and self._mid_line:  # the line begun here ends here, if soon
                cut = data.find(b"\n", 0, _LINE_SLACK) + 1
            elif cut == 0 and self._size == 0:  # a line longer than a file, whole
                cut = data.find(b"\n") + 1 or len(data)
            if cut:
                self._append(data[:cut])
                data = data[cut:]
            if not data and self._mid_line:
                return
            self.rotate()

    def rotate(self) -> None:
        """``path`` becomes ``path.1`` (the others move up, the oldest goes); a new ``path``."""
        if self._keep == 0:
            os.unlink(self.path)
        else:
            for index in range(self._keep - 1, 0, -1):
                older = rotated_path(self.path, index)
                if older.exists():
                    os.replace(older, rotated_path(self.path, index + 1))
            os.replace(self.path, rotated_path(self.path, 1))
        self._close()
        self._fd = open_private_log(self.path)
        self._size = 0
        self._mid_line = False  # (a line split here goes on as the new file's first)

    def reopen(self) -> None:
        """Open ``path`` anew, after a failed write or rotation left the state unknown."""
        with contextlib.suppress(OSError):
            self._close()
        self._fd = open_private_log(self.path)
        self._size = os.fstat(self._fd).st_size
        self._mid_line = False

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1  # never closed twice: the number may be reused
        if fd >= 0:
            os.close(fd)

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)
        self._mid_line = data[-1:] != b"\n"


def write_line(path: Path, max_bytes: int, keep: int, line: str) -> None:
    """Append one line of vgate's own (an engine's start marker), rotating as the keeper
    does; raises OSError when the log cannot be opened or written."""
    log = RotatingLog(path, max_bytes, keep)
    try:
        log.write(line.encode())
    finally:
        log.close()


def start_keeper(
    path: Path, max_bytes: int, keep: int
) -> tuple[subprocess.Popen[bytes] | None, int]:
    """The keeper of ``path``, and the pipe's write end to give the engine as its output
    (the caller closes its copy once the engine is spawned). Without :mod:`fcntl` (no
    POSIX system: the keeper's sessions and signals are POSIX too) no keeper, and the
    log itself as the engine's output, with a warning."""
    try:
        import fcntl
    except ImportError:
        logger.warning("no fcntl on this system: engine log %s is written directly, "
                    "never rotated", path)  # fmt: skip
        return None, open_private_log(path)
    read_end, write_end = os.pipe()
    try:
        with contextlib.suppress(OSError):  # Linux only; the default (64 KiB) works too
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE_SIZE)
        keeper = subprocess.Popen(
            [sys.executable, "-m", "engines.engine_log", str(path), str(max_bytes), str(keep)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return keeper, write_end


def keep(
    source: int, log: RotatingLog, retry_bytes: int = RETRY_BYTES, retry_s: float = RETRY_S
) -> None:
    """Copy ``source`` into ``log`` until it ends; after a write error, drop what is read
    until ``retry_bytes`` more were dropped or ``retry_s`` passed, then try again."""
    dropped = untried = 0  # bytes lost since the error; since the last try
    tried_at = 0.0
    while chunk := os.read(source, _READ_SIZE):
        if dropped and untried < retry_bytes and time.monotonic() - tried_at < retry_s:
            dropped += len(chunk)
            untried += len(chunk)
            continue
        try:
            if dropped:
                log.reopen()
                log.write(f"\nvgate engine log: {dropped} bytes of the engine's output "
                          "were dropped (could not write); writing again\n".encode())  # fmt: skip
            log.write(chunk)
        except OSError as exc:
            if not dropped:
                _say(f"vgate engine log {log.path}: cannot write ({exc}); dropping the "
                     "engine's output, trying again now and then")  # fmt: skip
            dropped += len(chunk)
            untried, tried_at = 0, time.monotonic()
            continue
        if dropped:
            _say(f"vgate engine log {log.path}: writing again ({dropped} bytes dropped)")
            dropped = 0


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """The keeper process: stdin (the engine's output) into the rotated log."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # only the pipe's end counts
    path, max_bytes, count = Path(argv[0]), int(argv[1]), int(argv[2])
    log = RotatingLog(path, max_bytes, count)
    try:
        keep(sys.stdin.fileno(), log)
    finally:
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
