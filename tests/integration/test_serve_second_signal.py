"""`vgate serve` with managed engines: a second SIGINT/SIGTERM stops now (as `vgate
engines run` does), without a traceback, the app's shutdown still run in order.

Before, a second SIGINT while requests were in progress made uvicorn skip the app's
shutdown: its close steps ran in tasks being cancelled (a ``CancelledError``
traceback) and the engines were left to their death signal; a second SIGTERM did
nothing (the whole ``server.shutdown_timeout_s`` was waited out); and a second signal
of either kind while the engines drained did nothing either (their whole
``drain_timeout_s``). Exit status as for one signal: 0 after SIGINT, killed by SIGTERM
after SIGTERM (uvicorn re-raises it).

``vgate up`` serves through the same code (``run_gateway``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers.processes import free_port
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL

LONG_S = 60  # the drain and the graceful period: far longer than the test may take
ENGINE_KEY = "engine-key-0123456789"
LONG_STREAM = {
    "model": STUB_MODEL,
    "messages": [{"role": "user", "content": "long"}],
    "stream": True,
    "stub": {"tokens": 10_000, "itl_ms": 100},  # ~17 minutes of stream
}
SIGNALS = [signal.SIGINT, signal.SIGTERM]


class Served:
    def __init__(self, process: subprocess.Popen[bytes], port: int, admin: int, log: Path):
        self.process, self.port, self.admin, self.log = process, port, admin, log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def engine_url(self) -> str:
        detail = httpx.get(f"http://127.0.0.1:{self.admin}/ready").json()
        url: str = next(iter(detail["engines"][STUB_MODEL]))
        return url


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port, admin = free_port(), free_port()
    health = {"interval_s": 0.2, "drain_timeout_s": LONG_S, "stop_timeout_s": 1}
    model = {"name": STUB_MODEL, "api_key": ENGINE_KEY}
    config: dict[str, Any] = {
        "server": {"admin_port": admin, "shutdown_timeout_s": LONG_S},
        "engines": {"log_dir": str(tmp_path / "logs")},
        "models": [{**model, "engine": {"kind": "stub", "health": health}}],
    }
    path = tmp_path / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "gateway.log"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    served = Served(process, port, admin, log_path)
    try:
        holds_soon(lambda: engine_listed(served) or process.poll() is not None, 30)
        assert process.poll() is None, log_path.read_text()
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def engine_listed(served: Served) -> bool:
    with contextlib.suppress(httpx.TransportError, KeyError, StopIteration):
        return bool(served.engine_url())
    return False


def running(engine_url: str) -> float:
    metrics = httpx.get(f"{engine_url}/metrics", headers=auth()).text
    line = next(x for x in metrics.splitlines() if x.startswith("vllm:num_requests_running"))
    return float(line.rsplit(" ", 1)[1])


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {ENGINE_KEY}"}


def refused(url: str) -> bool:
    """Whether a new connection is refused (one accepted just before the listener
    closed, then dropped, is not yet)."""
    try:
        httpx.get(url, timeout=1)
    except httpx.ConnectError:
        return True
    except httpx.TransportError:
        return False
    return False


def engine_pid(engine_url: str) -> int:
    pid: int = httpx.get(f"{engine_url}/stub/stats").json()["pid"]
    return pid


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def stop_twice_and_time(served: Served, signum: int, between: Callable[[], None]) -> float:
    """The first signal, ``between()`` (waits until the stage to test), the second
    signal; the seconds from it to the process's exit."""
    os.kill(served.process.pid, signum)
    between()
    assert served.process.poll() is None, "the first signal must drain, not stop at once"
    started = time.monotonic()
    os.kill(served.process.pid, signum)
    served.process.wait(timeout=20)
    return time.monotonic() - started


def expected_status(signum: int) -> int:
    return 0 if signum == signal.SIGINT else -signum


@pytest.mark.parametrize("signum", SIGNALS, ids=["int", "term"])
def test_a_second_signal_cuts_requests_in_progress_and_stops_engines_in_order(
    served: Served, signum: int
) -> None:
    engine = served.engine_url()
    pid = engine_pid(engine)
    events: list[str] = []

    def stream() -> None:
        with httpx.stream(
            "POST", f"{served.url}/v1/chat/completions", json=LONG_STREAM, timeout=30
        ) as answer:
            events.extend(line for line in answer.iter_lines() if line)

    reader = threading.Thread(target=stream)
    reader.start()
    holds_soon(lambda: running(engine) == 1, 10, "the stream never reached the engine")
    elapsed = stop_twice_and_time(
        served, signum, lambda: holds_soon(lambda: refused(served.url), 10)
    )
    reader.join(timeout=10)
    log = served.log.read_text()
    assert elapsed < 10, log[-3000:]  # not the graceful period (60 s)
    assert served.process.returncode == expected_status(signum), log[-3000:]
    assert "Traceback" not in log, log[-5000:]
    assert "Waiting for application shutdown" in log, log[-3000:]  # the app's shutdown ran
    assert "guardian" not in log, log[-3000:]  # engines stopped by vgate, not its guardian
    assert events[-1] == "data: [DONE]" and "shutting_down" in events[-2]
    assert gone(pid)


@pytest.mark.parametrize("signum", SIGNALS, ids=["int", "term"])
def test_a_second_signal_during_the_engines_drain_ends_it(served: Served, signum: int) -> None:
    engine = served.engine_url()
    pid = engine_pid(engine)
    with httpx.stream(
        "POST", f"{engine}/v1/chat/completions", json=LONG_STREAM, headers=auth(), timeout=30
    ) as answer:
        lines = answer.iter_lines()  # held: a generator let go closes the stream
        assert next(lines).startswith("data: ")
        assert running(engine) == 1  # what the drain waits on

        def draining() -> None:  # the operator listener is the first close step
            holds_soon(lambda: refused(f"http://127.0.0.1:{served.admin}/health"), 10)

        elapsed = stop_twice_and_time(served, signum, draining)
    log = served.log.read_text()
    assert elapsed < 10, log[-3000:]  # the stop (1 s) and its margins, not the drain (60 s)
    assert served.process.returncode == expected_status(signum), log[-3000:]
    assert "Traceback" not in log, log[-5000:]
    assert gone(pid)
