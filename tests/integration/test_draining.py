"""What a gateway does while it drains (SIGTERM, then ``server.shutdown_timeout_s``):
new connections are refused at once (with several workers too), readiness answers 503
``{"status": "draining"}`` while liveness stays 200 and the requests in progress
finish, and a vLLM pass-through request still running at the deadline gets the 503
``shutting_down`` error in OpenAI's shape, as a completion does.

Real gateway processes (``vgate serve``) in front of the stub engine, or of a scripted
engine that never answers a pass-through request.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.hostile_engine import ScriptedEngine
from tests.integration.conftest import STUB_MODEL
from tests.integration.test_operator_listener import _listening_pids
from tests.integration.test_shutdown import gateway_process, status, stub_engine, wait_for

SLOW_MS = 6_000
"""The request in progress while the drain is checked: it must still be running then."""


def refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused (not left waiting in a backlog)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def slow_completion(port: int) -> httpx.Response:
    body = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}],
            "stub": {"ttft_ms": SLOW_MS, "tokens": 3, "itl_ms": 0}}  # fmt: skip
    return httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)


def test_with_two_workers_new_connections_are_refused_once_the_drain_begins(
    tmp_path: Path,
) -> None:
    """uvicorn's supervisor kept its copy of the listening socket open until every worker
    had exited: new connections were accepted by the kernel and hung all through the
    drain. Now they are refused at once, as with one worker, while the request in
    progress still finishes."""
    with stub_engine() as (engine_url, _):
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
            "server": {"workers": 2, "shutdown_timeout_s": 30},
            "responses": {"memory_max_bytes": 0},  # each worker would keep its own
        }
        with gateway_process(config, tmp_path) as (gateway, port, admin, log_path):
            wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(slow_completion, port)
                stats = f"{engine_url}/stub/stats"
                wait_for(lambda: httpx.get(stats).json()["in_flight"] == 1, 10, "at the stub")
                gateway.send_signal(signal.SIGTERM)
                wait_for(lambda: refused(port), 4, "new connections refused")
                assert not slow.done(), "the drain was over before it was checked"
                detail = httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=5)
                assert detail.status_code == 503 and detail.json()["status"] == "draining"
                answer = slow.result(timeout=30)
            gateway.wait(timeout=15)
            log = log_path.read_text()
    assert answer.status_code == 200, (answer.text, log[-3000:])
    assert answer.json()["choices"][0]["message"]["content"]
    assert gateway.returncode == 0, (gateway.returncode, log[-3000:])
    started = set(re.findall(r"Started server process \[(\d+)\]", log))
    assert len(started) == 2, log  # two workers, neither restarted


def test_ready_answers_503_draining_while_requests_in_progress_finish(tmp_path: Path) -> None:
    """The operator's ``/ready`` turns 503 the moment the drain begins (it stayed 200
    until the process exited), ``/health`` stays 200, and the request in progress
    still gets its answer."""
    with stub_engine() as (engine_url, _):
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
            "server": {"shutdown_timeout_s": 30},
        }
        with gateway_process(config, tmp_path) as (gateway, port, admin, log_path):
            ready = f"http://127.0.0.1:{admin}/ready"
            assert status(ready) == 200
            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(slow_completion, port)
                stats = f"{engine_url}/stub/stats"
                wait_for(lambda: httpx.get(stats).json()["in_flight"] == 1, 10, "at the stub")
                gateway.send_signal(signal.SIGTERM)
                wait_for(lambda: status(ready) == 503, 4, "/ready to turn 503")
                assert not slow.done(), "the drain was over before it was checked"
                detail = httpx.get(ready, timeout=5).json()
                assert detail["status"] == "draining" and detail["known_engines"] == 1
                assert status(f"http://127.0.0.1:{admin}/health") == 200
                assert refused(port)
                answer = slow.result(timeout=30)
            gateway.wait(timeout=15)
            log = log_path.read_text()
    assert answer.status_code == 200, (answer.text, log[-3000:])
    assert gateway.returncode == -signal.SIGTERM, (gateway.returncode, log[-3000:])


class SilentPassthroughEngine(ScriptedEngine):
    """Answers health and model probes; never answers a pass-through request."""

    async def answer(self, mode: str, request: dict[str, Any], writer: Any) -> bool:
        await asyncio.Event().wait()
        return False


@pytest.mark.parametrize("path", ["/tokenize", "/v1/score"])
def test_a_passthrough_request_cut_at_the_deadline_gets_the_503_json(
    path: str, tmp_path: Path
) -> None:
    """vLLM's routes got uvicorn's plain-text 500 at the shutdown deadline (and an
    "Exception in ASGI application" traceback); now the completions' 503."""
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    if path == "/v1/score":
        body = {"model": "m", "text_1": "a", "text_2": "b", "messages": body["messages"]}
    with SilentPassthroughEngine() as engine:
        config = {
            "models": [{"name": "m", "endpoints": [engine.url]}],
            "server": {"shutdown_timeout_s": 1},
        }
        with gateway_process(config, tmp_path) as (gateway, port, _, log_path):
            with ThreadPoolExecutor(1) as pool:
                url = f"http://127.0.0.1:{port}{path}"
                cut = pool.submit(httpx.post, url, json=body, timeout=30)
                wait_for(lambda: len(engine.requests) == 1, 10, "the request at the engine")
                gateway.send_signal(signal.SIGTERM)
                answer = cut.result(timeout=15)
            gateway.wait(timeout=15)
            log = log_path.read_text()
    assert answer.status_code == 503, (answer.status_code, answer.text, log[-3000:])
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["connection"] == "close"
    error = answer.json()["error"]
    assert error["code"] == "shutting_down" and error["type"] == "service_unavailable"
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log
    assert f"shutdown deadline: POST {path}" in log, log
