"""``server.workers > 1``: every worker's figures in every ``/metrics`` scrape.

Each worker keeps its own registry, and every worker serves the port (and the operator
port) with ``SO_REUSEPORT``: the kernel picks one per connection. Served as they are, a
scrape saw one worker's counters and the next scrape another's, which Prometheus'
``rate()`` reads as counter resets: dashboards and alerts were wrong.

So the supervisor gives each worker a :class:`WorkerPlace` (its index, the worker
count and a private run directory, 0700). Each worker serves its own exposition on a
unix socket there (:class:`WorkerMetrics`: connect, read an 8-byte length and that
many bytes, nothing else), and ``/metrics`` on any worker asks every other worker at
once, each under :data:`PEER_TIMEOUT_S`, and merges the answers with its own
(:func:`merge_expositions`): each family's ``# HELP`` and ``# TYPE`` once, then every
worker's samples of it with a ``worker="<index>"`` label (the text format requires a
family's samples to stay together). A worker that does not answer (restarting, hung)
is left out of that scrape and counted in ``vgate_metrics_workers_missing``; a
truncated answer (a worker dying while it sends) counts as missing, never as half a
family. With one worker none of this runs: no socket, no label.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

PEER_TIMEOUT_S = 1.0
"""How long a scrape waits for another worker's figures (all are asked at once)."""
_LENGTH_BYTES = 8
MISSING_FAMILY = "vgate_metrics_workers_missing"
_SOCKET_PATH_MAX = 107
"""The longest path a unix socket can bind on Linux (``sun_path`` is 108 bytes, NUL ended)."""
_SHORT_TEMP_DIR = "/tmp"
_RUN_DIR_PREFIX = "vgate-workers-"


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Where one worker process stands among ``count``: sent by the supervisor."""

    index: int
    count: int
    run_dir: str
    """The supervisor's private directory (0700) holding every worker's socket."""

    def socket_path(self, index: int) -> Path:
        return Path(self.run_dir) / f"worker-{index}.sock"


def make_run_dir(count: int) -> str:
    """A new private directory (0700) for ``count`` workers' sockets: in the temporary
    directory (``$TMPDIR``), or in ``/tmp`` when that one's path is too long for a unix
    socket (every worker failed to start with "AF_UNIX path too long" under a
    ``$TMPDIR`` of ~80 characters). Raises OSError, saying so, when neither will do."""
    longest = len(f"/worker-{count - 1}.sock")
    prefix = f"{_RUN_DIR_PREFIX}{os.getpid()}-"
    for parent in (None, _SHORT_TEMP_DIR):
        _remove_left_behind(Path(parent or tempfile.gettempdir()))
        run_dir = tempfile.mkdtemp(prefix=prefix, dir=parent)
        if len(os.fsencode(run_dir)) + longest <= _SOCKET_PATH_MAX:
            return run_dir
        shutil.rmtree(run_dir, ignore_errors=True)
    raise OSError(
        f"no directory for the workers' metrics sockets: {tempfile.gettempdir()!r} and "
        f"{_SHORT_TEMP_DIR!r} give paths over {_SOCKET_PATH_MAX} bytes; set TMPDIR shorter"
    )


def _remove_left_behind(parent: Path) -> None:
    """Remove the run directories in ``parent`` whose supervisor is gone (the pid in the
    name no longer runs: it was killed, SIGKILL or the OOM killer, before removing it).
    Only this user's (another's are not ours to remove, nor removable: 0700)."""
    with contextlib.suppress(OSError):
        for entry in parent.glob(f"{_RUN_DIR_PREFIX}*-*"):
            pid = entry.name.removeprefix(_RUN_DIR_PREFIX).partition("-")[0]
            if pid.isdecimal() and entry.stat().st_uid == os.getuid() and _gone(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False


class WorkerMetrics:
    """This worker's exposition on its socket, and the merged scrape of every worker."""

    def __init__(
        self,
        place: WorkerPlace,
        render: Callable[[], bytes],
        timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        self._place = place
        self._render = render
        self._timeout_s = timeout_s
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Serve this worker's exposition (a socket left by a worker that died in this
        place before is replaced)."""
        path = self._place.socket_path(self._place.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self._place.socket_path(self._place.index).unlink()

    async def scrape(self) -> bytes:
        """Every worker's figures, merged: this one's own, the others' over their
        sockets (a worker that does not answer in time is missing from this scrape)."""
        others = [i for i in range(self._place.count) if i != self._place.index]
        answers = await asyncio.gather(*(self._ask(i) for i in others))
        parts = {self._place.index: self._render()}
        parts.update((i, text) for i, text in zip(others, answers, strict=True) if text is not None)
        return merge_expositions(sorted(parts.items()), missing=self._place.count - len(parts))

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            text = self._render()
            writer.write(len(text).to_bytes(_LENGTH_BYTES, "big") + text)
            await writer.drain()
        except ConnectionError:
            pass  # the asking worker gave up (its timeout)
        finally:
            writer.close()

    async def _ask(self, index: int) -> bytes | None:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                path = str(self._place.socket_path(index))
                reader, writer = await asyncio.open_unix_connection(path)
                length = int.from_bytes(await reader.readexactly(_LENGTH_BYTES), "big")
                return await reader.readexactly(length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return None  # not there (restarting), not answering, or cut off
        finally:
            if writer is not None:
                writer.close()


def merge_expositions(parts: Iterable[tuple[int, bytes]], missing: int = 0) -> bytes:
    """One text exposition of several workers' (``(index, exposition)``, in order): each
    family once, in the order first seen, its header from the first worker that has it,
    then every worker's samples of it labelled ``worker="<index>"``; last
    ``vgate_metrics_workers_missing``: how many workers' figures are not in it."""
    families: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
    for index, text in parts:
        label = b'worker="%d"' % index
        for name, header, samples in _families(text):
            family = families.setdefault(name, (header, []))
            family[1].extend(_labelled(sample, label) for sample in samples)
    lines = [line for header, samples in families.values() for line in (*header, *samples)]
    lines += [
        b"# HELP %s Workers whose figures this scrape lacks (restarting, or not answering "
        b"within %gs)." % (MISSING_FAMILY.encode(), PEER_TIMEOUT_S),
        b"# TYPE %s gauge" % MISSING_FAMILY.encode(),
        b"%s %d.0" % (MISSING_FAMILY.encode(), missing),
    ]
    return b"\n".join(lines) + b"\n"


def _families(text: bytes) -> list[tuple[bytes, list[bytes], list[bytes]]]:
    """``(name, header lines, sample lines)`` per family, in order: a family begins at a
    ``# HELP``/``# TYPE`` line naming another family than the current one (or the same
    one after samples); samples before any header form a family of their own."""
    families: list[tuple[bytes, list[bytes], list[bytes]]] = []
    for line in text.split(b"\n"):
        if not line:
            continue
        if line.startswith(b"#"):
            words = line.split(b" ", 3)
            if len(words) < 3 or words[1] not in (b"HELP", b"TYPE"):
                continue  # a comment: nothing to keep
            name = words[2]
            if not families or families[-1][0] != name or families[-1][2]:
                families.append((name, [], []))
            families[-1][1].append(line)
        else:
            if not families:
                families.append((line.split(b"{", 1)[0].split(b" ", 1)[0], [], []))
            families[-1][2].append(line)
    return families


def _labelled(sample: bytes, label: bytes) -> bytes:
    """``sample`` with ``label`` first among its labels (metric names hold neither ``{``
    nor a space, so the first of either ends the name)."""
    brace, space = sample.find(b"{"), sample.find(b" ")
    if brace >= 0 and (space < 0 or brace < space):
        rest = sample[brace + 1 :]
        return sample[: brace + 1] + label + (b"" if rest.startswith(b"}") else b",") + rest
    if space < 0:
        return sample  # not a sample line: left as it came
    return sample[:space] + b"{" + label + b"}" + sample[space:]
