"""The engine log keeper after a write error (a full disk): it drops the engine's output
rather than stall it, and writes again once it can (it dropped everything for good,
even once space was free again), saying in the log how much was lost. Without
:mod:`fcntl` an engine still starts, writing its log itself (the ImportError stopped
every engine from starting)."""

from __future__ import annotations

import array
import fcntl
import os
import sys
import termios
import threading
from pathlib import Path

import pytest

from engines.engine_log import RotatingLog, keep, start_keeper
from engines.process import EngineProcess, LaunchPlan
from tests.helpers.waiting import holds_soon


class FullForSomeLines(RotatingLog):
    """A disk full while a chunk holding ``FULL`` is written."""

    def write(self, data: bytes) -> None:
        if b"FULL" in data:
            raise OSError(28, "No space left on device")
        super().write(data)


def _pending(read_end: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(read_end, termios.FIONREAD, count)
    return count[0]


def _feed_one_read_each(write_end: int, read_end: int, pieces: list[bytes]) -> None:
    """Write each piece once the keeper has read the one before: one read per piece."""
    for piece in pieces:
        holds_soon(lambda: _pending(read_end) == 0)
        os.write(write_end, piece)
    os.close(write_end)


def test_a_keeper_writes_again_once_it_can_and_says_what_was_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m-0.log"
    read_end, write_end = os.pipe()
    pieces = [b"one\n", b"FULL two\n", b"three\n", b"four\n", b"five\n"]
    feeder = threading.Thread(target=_feed_one_read_each, args=(write_end, read_end, pieces))
    feeder.start()
    log = FullForSomeLines(path, 64 * 1024, keep=1)
    try:
        keep(read_end, log, retry_bytes=1)  # tried again after one more read dropped
    finally:
        feeder.join()
        log.close()
        os.close(read_end)
    text = path.read_text()
    assert text.startswith("one\n"), text
    assert "15 bytes of the engine's output were dropped" in text, text  # two, three
    assert text.endswith("writing again\nfour\nfive\n"), text
    err = capsys.readouterr().err
    assert err.count("No space left on device") == 1, err
    assert err.count("writing again (15 bytes dropped)") == 1, err


def test_without_fcntl_an_engine_writes_its_log_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError
    keeper, output = start_keeper(tmp_path / "direct.log", 64 * 1024, 1)
    os.close(output)
    assert keeper is None
    assert "written directly" in caplog.text
    plan = LaunchPlan(
        argv=(sys.executable, "-c", "print('engine speaking')"),
        env=dict(os.environ),
        url="http://127.0.0.1:1",
        served_name="m",
        log_path=tmp_path / "m-0.log",
    )
    engine = EngineProcess(plan)
    engine.spawn()
    holds_soon(lambda: engine.exit_code() is not None)
    assert engine.exit_code() == 0
    assert "engine speaking" in plan.log_path.read_text()
