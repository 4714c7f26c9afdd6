"""Bounded shutdown (issue 14, acceptance 4): SIGTERM ends a gateway within
``server.shutdown_timeout_s`` + 5 s, whatever state its Redis, its engines and its
clients are in.

Each case runs a real gateway (Redis-backed keys, limits and cache, an operator
listener) in front of its own stub engine and its own redis-server, opens hostile
connections (a request head never finished, a body never finished, a connection
that sends nothing, and a stream in progress whose client never reads), then breaks
one thing and sends SIGTERM:

* ``redis-killed``: redis-server SIGKILLed (readiness turns 503 first: Redis is
  configured and unreachable);
* ``redis-paused``: redis-server SIGSTOPped (no connection error, ever);
* ``engine-killed``: the stub engine SIGKILLed (readiness stays 200: the engine is
  still known, only unhealthy);
* ``clients-only``: nothing else broken.

``shutdown_timeout_s`` is 3 s here, so the stream in progress holds the drain for
those 3 s; the gateway must then be gone within 5 s more. About 7 s per case.

A last case checks what requests still running at that deadline get: an OpenAI
error (a 503, or a stream's error event and ``[DONE]``), not uvicorn's 500 or a
stream cut mid-body.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import yaml

from tests.helpers.processes import free_port, run_process
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL

SHUTDOWN_TIMEOUT_S = 3
BOUND_S = SHUTDOWN_TIMEOUT_S + 5
KEY = "sk-shutdown-0123456789"
CASES = ["redis-killed", "redis-paused", "engine-killed", "clients-only"]


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def status(url: str) -> int | None:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(url, timeout=1.0).status_code
    return None


@contextlib.contextmanager
def stub_engine() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A stub whose streams last far longer than any test (a token every 200 ms)."""
    port = free_port()
    argv = [sys.executable, "-m", "engines.stub", "--port", str(port), "--model", STUB_MODEL,
            "--itl-ms", "200", "--tokens", "100000"]  # fmt: skip
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30) as process:
        yield f"http://127.0.0.1:{port}", process


@contextlib.contextmanager
def gateway_process(
    config: dict[str, Any], directory: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int, int, Path]]:
    """``vgate serve`` writing its log to a file (read back on failure); killed for sure
    on the way out."""
    port, admin = free_port(), free_port()
    path = directory / "vgate.yaml"
    config = {**config, "server": {**config.get("server", {}), "admin_port": admin}}
    path.write_text(yaml.safe_dump(config))
    log_path = directory / "gateway.log"
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: status(f"http://127.0.0.1:{port}/ready") == 200 or bool(process.poll()),
                 30, "the gateway to be ready")  # fmt: skip
        assert process.poll() is None, log_path.read_text()
        yield process, port, admin, log_path
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def open_hostile_connections(port: int) -> list[socket.socket]:
    """A head never finished, a body never finished, a silent connection, and a stream
    in progress whose client stops reading after its first event."""
    heads = [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEY.encode() + b'\r\nContent-Length: 100000\r\n\r\n{"model',
        b"",
    ]
    sockets = []
    for head in heads:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if head:
            sock.sendall(head)
        sockets.append(sock)
    body = orjson.dumps({"model": STUB_MODEL, "stream": True,
                         "messages": [{"role": "user", "content": "a long story"}]})  # fmt: skip
    stream = socket.create_connection(("127.0.0.1", port), timeout=5)
    stream.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    received = b""
    while b"data: " not in received:  # the stream has started at the engine
        chunk = stream.recv(65536)
        assert chunk, f"the stream ended before its first event: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    sockets.append(stream)
    return sockets


@pytest.mark.parametrize("case", CASES)
def test_sigterm_ends_the_gateway_in_bounded_time(case: str, tmp_path: Path) -> None:
    with run_redis() as redis_url, stub_engine() as (engine_url, engine):
        with redis.Redis.from_url(redis_url) as client:
            redis_pid = int(client.info()["process_id"])
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
            "redis": {"url": redis_url, "timeout_s": 0.25, "retry_s": 0.2},
            "auth": {"enabled": True, "keys": [{"name": "chaos", "key": KEY, "rpm": 1000}]},
            "cache": {"enabled": True},
            "engines": {"watch_interval_s": 0.1},
            "upstream": {"health_interval_s": 0.2},
            "server": {"shutdown_timeout_s": SHUTDOWN_TIMEOUT_S},
        }
        try:
            with gateway_process(config, tmp_path) as (gateway, port, admin, log_path):
                hostile = open_hostile_connections(port)
                ready = f"http://127.0.0.1:{port}/ready"
                if case.startswith("redis-"):
                    stop = signal.SIGKILL if case == "redis-killed" else signal.SIGSTOP
                    os.kill(redis_pid, stop)
                    wait_for(lambda: status(ready) == 503, 10, "/ready to turn 503")
                if case == "redis-killed":  # the watcher then fails every 0.1 s tick
                    wait_for(lambda: "engine registry unreadable" in log_path.read_text(), 10,
                             "the watcher's first failure")  # fmt: skip
                elif case == "engine-killed":
                    engine.kill()
                    detail = f"http://127.0.0.1:{admin}/ready"
                    wait_for(lambda: not _engine_healthy(detail), 10, "the engine marked down")
                    assert status(ready) == 200  # known but unhealthy: still ready
                started = time.monotonic()
                gateway.send_signal(signal.SIGTERM)
                try:
                    gateway.wait(timeout=BOUND_S)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"still running {BOUND_S} s after SIGTERM:\n" + _tail(log_path))
                elapsed = time.monotonic() - started
                log = log_path.read_text()
                for sock in hostile:
                    sock.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(redis_pid, signal.SIGCONT)  # so that its own clean-up can stop it
    assert elapsed < BOUND_S, (elapsed, log)  # about 3.3 s here: the drain, then closing
    assert gateway.returncode == -signal.SIGTERM, (gateway.returncode, log[-3000:])
    assert "exiting now" not in log  # the graceful path finished, not the watchdog
    if case == "redis-killed":  # ~30 failed ticks while draining, and not 30 lines: one
        # per kind of error (a read cut by the kill, "connection reset", may come before
        # the "connection refused" of every later tick: RepeatedLog logs a new kind once)
        lines = [line for line in log.splitlines() if "engine registry unreadable" in line]
        assert 1 <= len(lines) <= 2, log
        assert len({line.split(": ", 1)[-1] for line in lines}) == len(lines), log


def _engine_healthy(detail_url: str) -> bool:
    engines = httpx.get(detail_url, timeout=1.0).json()["engines"][STUB_MODEL]
    return any(engines.values())


def _tail(path: Path) -> str:
    return path.read_text()[-4000:]


def test_requests_cut_off_at_the_deadline_end_in_openai_shape(tmp_path: Path) -> None:
    """Requests still running when ``shutdown_timeout_s`` ends are cancelled by uvicorn:
    one not yet answered gets a 503 (``shutting_down``) in OpenAI's shape with
    ``connection: close``, a stream its error event, ``[DONE]`` and a proper end; each
    is logged once, as a WARNING, with no traceback (uvicorn's plain-text 500, a
    stream cut mid-body and "Exception in ASGI application" before)."""
    started = threading.Event()
    responses_started = threading.Event()

    def plain(port: int) -> httpx.Response:
        body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}],
                "stub": {"ttft_ms": 60_000}}  # fmt: skip
        return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)

    def read_stream(url: str, body: dict[str, Any], first: threading.Event) -> list[str]:
        """The ``data:`` values of a stream (httpx raises on a body cut short)."""
        with httpx.stream("POST", url, json=body, timeout=30) as response:
            assert response.status_code == 200
            data = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data.append(line[6:])
                    first.set()
            return data

    def stream(port: int) -> list[str]:
        body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}],
                "stream": True, "stub": {"tokens": 100_000, "itl_ms": 50}}  # fmt: skip
        return read_stream(f"http://127.0.0.1:{port}/v1/chat/completions", body, started)

    def responses_stream(port: int) -> list[str]:
        body = {"model": STUB_MODEL, "input": "hi", "stream": True, "store": False,
                "stub": {"tokens": 100_000, "itl_ms": 50}}  # fmt: skip
        return read_stream(f"http://127.0.0.1:{port}/v1/responses", body, responses_started)

    with stub_engine() as (engine_url, _):
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
            "server": {"shutdown_timeout_s": 1, "log_format": "json"},
        }
        with gateway_process(config, tmp_path) as (gateway, port, _, log_path):
            with ThreadPoolExecutor(3) as pool:
                plain_answer = pool.submit(plain, port)
                streamed = pool.submit(stream, port)
                responses = pool.submit(responses_stream, port)
                stats = f"{engine_url}/stub/stats"
                wait_for(lambda: httpx.get(stats).json()["in_flight"] == 3, 10, "all at the stub")
                assert started.wait(10), "the stream's first event"
                assert responses_started.wait(10), "the Responses stream's first event"
                gateway.send_signal(signal.SIGTERM)
                answer = plain_answer.result(timeout=BOUND_S)
                events = streamed.result(timeout=BOUND_S)
                response_events = responses.result(timeout=BOUND_S)
            gateway.wait(timeout=BOUND_S)
            log = log_path.read_text()
    assert answer.status_code == 503, (answer.status_code, answer.text, log[-3000:])
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    error = answer.json()["error"]
    assert error["code"] == "shutting_down" and error["type"] == "service_unavailable"
    assert error["param"] is None and "shutdown_timeout_s" in error["message"]
    assert events[-1] == "[DONE]", events[-3:]
    assert orjson.loads(events[-2])["error"]["code"] == "shutting_down", events[-3:]
    last = orjson.loads(response_events[-1])  # a Responses stream: its own error event
    assert last["type"] == "error" and last["code"] == "shutting_down", response_events[-3:]
    before = orjson.loads(response_events[-2])  # numbered after the last event relayed
    assert last["sequence_number"] == before["sequence_number"] + 1, response_events[-3:]
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log
    records = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    cut = [r for r in records if r["message"].startswith("shutdown deadline")]
    assert [r["level"] for r in cut] == ["warning"] * 3, cut
    assert not any(r["level"] in ("error", "critical") and r["logger"].startswith("vgate")
                   for r in records), log  # fmt: skip
