"""Engine logs are bounded: rotated by size at a line's end, a given number kept, no line
lost, even from an engine that floods its output and is killed with SIGKILL; the
diagnosis still reads a failed start's last words across a rotation."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

import engines.process as process_module
from engines.engine_log import RotatingLog, keep, read_tail, rotated_path, start_keeper
from engines.process import EngineProcess, EngineStartError, LaunchPlan
from engines.spec import LOG_MIN_MAX_BYTES

MAX = 64 * 1024


def log_files(path: Path, keep: int) -> list[Path]:
    """Oldest first: ``path.keep`` ... ``path.1``, ``path`` (those that exist)."""
    older = [rotated_path(path, i) for i in range(keep, 0, -1)]
    return [p for p in [*older, path] if p.exists()]


def test_rotation_cuts_at_line_ends_keeps_the_newest_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "m-0.log"
    log = RotatingLog(path, MAX, keep=2)
    lines = [f"line {n:06d} {'x' * (n % 97)}\n".encode() for n in range(20000)]
    stream = b"".join(lines)
    for start in range(0, len(stream), 4093):  # chunks that cut lines anywhere
        log.write(stream[start : start + 4093])
    log.close()

    files = log_files(path, keep=5)
    assert files == [rotated_path(path, 2), rotated_path(path, 1), path]  # 2 kept, no .3
    for file in files:
        data = file.read_bytes()
        assert len(data) <= MAX
        assert data.endswith(b"\n") and data.split(b"\n")[0].startswith(b"line ")
    kept = b"".join(file.read_bytes() for file in files)
    assert stream.endswith(kept)  # the newest output, in order, nothing missing
    assert len(kept) > 2 * MAX - 200


def test_a_line_longer_than_a_file_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "m-0.log"
    log = RotatingLog(path, MAX, keep=2)
    log.write(b"short\n")
    log.write(b"y" * (MAX + 10) + b"\nafter\n")
    log.close()
    assert rotated_path(path, 2).read_bytes() == b"short\n"
    assert rotated_path(path, 1).read_bytes() == b"y" * (MAX + 10) + b"\n"
    assert path.read_bytes() == b"after\n"


def test_an_endless_line_is_split_across_files_and_nothing_is_lost(tmp_path: Path) -> None:
    """A line going on past the slack (a dump without newlines) once rotated empty files
    in a loop: the keeper hung, and the engine with it on a full pipe."""
    path = tmp_path / "m-0.log"
    log = RotatingLog(path, MAX, keep=20)
    stream = b"head\n" + b"r" * (MAX - 10) + b"s" * (5 * MAX) + b"\ntail\n"
    for start in range(0, len(stream), 100_000):
        log.write(stream[start : start + 100_000])
    log.close()
    files = log_files(path, keep=20)
    assert b"".join(file.read_bytes() for file in files) == stream
    assert all(0 < file.stat().st_size <= MAX + 100_000 for file in files)


def test_a_file_ending_mid_line_takes_the_whole_lines_that_fit(tmp_path: Path) -> None:
    path = tmp_path / "m-0.log"
    log = RotatingLog(path, MAX, keep=1)
    log.write(b"partial")  # the file ends mid-line
    log.write(b" line\n" + (b"z" * 99 + b"\n") * (MAX // 50))
    log.close()
    assert rotated_path(path, 1).stat().st_size > MAX - 100  # not cut at the first line
    assert rotated_path(path, 1).read_bytes().startswith(b"partial line\n")


def test_an_existing_file_past_the_limit_is_rotated_first(tmp_path: Path) -> None:
    path = tmp_path / "m-0.log"
    path.write_bytes(b"old\n" * (MAX // 2))
    log = RotatingLog(path, MAX, keep=3)
    log.write(b"new\n")
    log.close()
    assert path.read_bytes() == b"new\n"
    assert rotated_path(path, 1).read_bytes().startswith(b"old\n")
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_tail_reads_across_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "m-0.log"
    rotated_path(path, 1).write_bytes(b"a" * 100 + b"Traceback: the cause\n")
    path.write_bytes(b"last\n")
    assert read_tail(path, 30).endswith("Traceback: the cause\nlast\n")
    assert len(read_tail(path, 30)) == 30


FLOOD = """
import os, sys
n = 0
while True:
    os.write(1, b"".join(b"line %08d %s\\n" % (n + i, b"z" * 50) for i in range(500)))
    n += 500
    if n >= STOP:
        os.write(1, b"LAST LINE\\n")
        os.kill(os.getpid(), 9)
"""


async def test_a_flooding_engine_killed_mid_flood_fills_no_disk_and_loses_no_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "m-0.log"
    stop = 200_000  # ~12 MB of output, far past 3 x 64 KiB
    plan = LaunchPlan(
        argv=(sys.executable, "-c", FLOOD.replace("STOP", str(stop))),
        env=dict(os.environ),
        url="http://127.0.0.1:1",
        served_name="m",
        log_path=path,
        log_max_bytes=LOG_MIN_MAX_BYTES,
        log_keep=2,
    )
    process = EngineProcess(plan)
    process.spawn()
    try:
        async with asyncio.timeout(60):
            while process.exit_code() is None:
                await asyncio.sleep(0.05)
        assert process.exit_code() == -signal.SIGKILL
        assert await process.log_written(30)
    finally:
        await process.stop(1)
    files = log_files(path, keep=5)
    assert len(files) == 3
    assert all(file.stat().st_size <= LOG_MIN_MAX_BYTES + 64 for file in files)  # + a line
    kept = b"".join(file.read_bytes() for file in files).split(b"\n")
    assert kept[-2:] == [b"LAST LINE", b""]
    numbers = [int(line.split()[1]) for line in kept[:-2]]
    assert numbers == list(range(stop - len(numbers), stop))  # consecutive: none lost
    assert process.log_tail().endswith("LAST LINE\n")


async def test_a_failed_start_reports_its_last_words(tmp_path: Path) -> None:
    code = "import sys; print('x' * 70000); print('FATAL: the real cause', file=sys.stderr)"
    plan = LaunchPlan(
        argv=(sys.executable, "-c", code + "; sys.exit(3)"),
        env=dict(os.environ),
        url="http://127.0.0.1:1",
        served_name="m",
        log_path=tmp_path / "m-0.log",
        log_max_bytes=LOG_MIN_MAX_BYTES,
    )
    process = EngineProcess(plan)
    process.spawn()
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(30):
            try:
                await process.wait_ready(session, 30, lambda _: None)
            except EngineStartError as exc:
                message = str(exc)
    finally:
        await process.stop(1)
    assert "exited with 3" in message and "FATAL: the real cause" in message


class FullDisk(RotatingLog):
    def write(self, data: bytes) -> None:
        raise OSError(28, "No space left on device")


def test_a_keeper_that_cannot_write_drains_the_engine_and_says_so_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stopping would leave the engine blocked on a full pipe: it is drained instead."""
    read_end, write_end = os.pipe()
    written = 0
    for _ in range(8):
        written += os.write(write_end, b"line\n" * 1000)
    os.close(write_end)
    log = FullDisk(tmp_path / "m-0.log", MAX, keep=1)
    try:
        keep(read_end, log)
    finally:
        log.close()
        os.close(read_end)
    assert written == 40000
    assert capsys.readouterr().err.count("No space left on device") == 1


def test_an_engine_that_cannot_be_spawned_leaves_no_keeper_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper starts before the engine; when the engine cannot be executed, the
    keeper is ended and reaped there and then (it was left a zombie, never waited for:
    the slot gives up without a stop, which is what reaps it otherwise)."""
    keepers: list[subprocess.Popen[bytes]] = []

    def recording(path: Path, max_bytes: int, count: int) -> tuple[subprocess.Popen[bytes], int]:
        keeper, output = start_keeper(path, max_bytes, count)
        assert keeper is not None
        keepers.append(keeper)
        return keeper, output

    monkeypatch.setattr(process_module, "start_keeper", recording)
    plan = LaunchPlan(
        argv=(str(tmp_path / "no-such-interpreter"), "-c", "pass"),
        env=dict(os.environ),
        url="http://127.0.0.1:1",
        served_name="m",
        log_path=tmp_path / "m-0.log",
    )
    with pytest.raises(FileNotFoundError):
        EngineProcess(plan).spawn()
    assert len(keepers) == 1
    assert keepers[0].returncode is not None  # reaped; unfixed: None, never waited for
