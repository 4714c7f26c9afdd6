"""Engine faults under load: one of a model's two engines hangs (SIGSTOP, longer than
``upstream.read_timeout_s``), is killed mid-stream and restarted on the same port, and
is replaced by a listener that accepts connections and never answers.

Clients (the official SDK streaming, raw httpx streaming and not) keep asking
throughout. Each gets a complete answer or an OpenAI-shaped error (a stream cut by
the engine ends with an error event, never silently), none waits past its deadline;
after each fault heals the engine serves again, the gateway counts no request in
flight, and ``/ready`` says every engine is healthy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.background_load import BackgroundLoad
from tests.helpers.metrics_text import metric_sum
from tests.helpers.processes import free_port, run_process
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, start_gateway
from tests.integration.test_fault_hunt_redis_errors import Outcome, ask_safely

READ_TIMEOUT_S = 1.5
SLOWEST_S = READ_TIMEOUT_S + 3.0
"""A request on the hung engine waits for the read timeout, then gets its 504; the rest
is the stub's answer and a loaded 2-core machine."""
PING = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "back?"}], "max_tokens": 1}


@contextlib.contextmanager
def engine(port: int) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "engines.stub", "--port", str(port), "--model", STUB_MODEL,
            "--itl-ms", "30", "--tokens", "8"]  # fmt: skip
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30) as process:
        yield process


@contextlib.contextmanager
def silent_listener(port: int) -> Iterator[None]:
    """Accepts connections on ``port`` and never answers (nor closes them)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(128)
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.close()
        thread.join()
        for connection in accepted:
            connection.close()


def _settled(gateway: Gateway, port: int) -> bool:
    """Nothing in flight, and the engine on ``port`` healthy again and serving."""
    metrics = gateway.metrics()
    engines = gateway.ready()["engines"][STUB_MODEL]
    before = httpx.get(f"http://127.0.0.1:{port}/stub/stats").json()["requests"]
    for _ in range(4):  # least-loaded routing: an idle healthy engine gets some
        httpx.post(f"{gateway.base_url}/chat/completions", json=PING)
    served = httpx.get(f"http://127.0.0.1:{port}/stub/stats").json()["requests"] > before
    idle = metric_sum(metrics, "vgate_requests_in_flight") == 0
    return idle and all(engines.values()) and served


@pytest.mark.parametrize("fault", ["hang", "killed_and_restarted", "silent_listener"])
def test_an_engine_fault_under_load_is_answered_and_healed(fault: str, tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(engine(port_a))
        stack.enter_context(engine(port_b))
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [
                f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}"]}],
            "upstream": {"read_timeout_s": READ_TIMEOUT_S, "connect_timeout_s": 1.0,
                         "health_interval_s": 0.3, "retries": 1, "breaker_cooldown_s": 1.0},
        }  # fmt: skip
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(config, tmp_path))
        with _load(gateway) as load:
            holds_soon(lambda: len(load.outcomes) >= 8, 10.0, "no traffic before the fault")
            url_a = f"http://127.0.0.1:{port_a}"
            marked_down = lambda: not gateway.ready()["engines"][STUB_MODEL][url_a]  # noqa: E731
            if fault == "hang":
                os.kill(a.pid, signal.SIGSTOP)
                holds_soon(marked_down, READ_TIMEOUT_S + 10, "a hung engine stayed ready")
                os.kill(a.pid, signal.SIGCONT)
            else:
                os.kill(a.pid, signal.SIGKILL)  # streams in flight are cut
                a.wait()
                if fault == "silent_listener":
                    with silent_listener(port_a):
                        holds_soon(marked_down, READ_TIMEOUT_S + 10, "a silent engine stayed ready")
                stack.enter_context(engine(port_a))  # back on the same port
            seen = len(load.outcomes)
            holds_soon(lambda: len(load.outcomes) >= seen + 8, 10.0, "no answers after the fault")
        outcomes = load.outcomes
        assert all(o.shaped for o in outcomes), [o for o in outcomes if not o.shaped]
        assert {o.status for o in outcomes} <= {200, 502, 503, 504}, outcomes
        assert max(o.took for o in outcomes) < SLOWEST_S, max(outcomes, key=lambda o: o.took)
        holds_soon(lambda: _settled(gateway, port_a), 10.0, "not healed")


def _load(gateway: Gateway) -> BackgroundLoad[Outcome]:
    """Four clients asking without pause (no key: the engines are what is tested)."""
    kinds = ("sdk", "stream", "stream", "plain")
    return BackgroundLoad(lambda kind: ask_safely(gateway, kind), kinds)
