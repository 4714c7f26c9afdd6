"""A gateway with short connection limits, run as its own process, and the clients
that probe it: shared by tests/integration/test_connection_limits.py and
test_send_deadline.py (each starts its own, module-scoped)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Stub

HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
KEEPALIVE_TIMEOUT_S = 2
SEND_TIMEOUT_S = 2.0
TICK_S = 1.0  # deadlines are checked once a second (gateway.http.connections)
MAX_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
COMPLETION = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@dataclass
class Served:
    """A running gateway: its port and process id."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)


@contextlib.contextmanager
def serve(stub: Stub, directory: Path, **server: Any) -> Iterator[Served]:
    port = free_port()
    config = {"models": [{"name": STUB_MODEL, "endpoints": [stub.url]}], "server": server}
    path = directory / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30) as process:
        yield Served(port, process.pid)


@dataclass
class NormalTraffic:
    """A client sending a completion every 50 ms from a thread; results as (sent at, status)."""

    url: str
    results: list[tuple[float, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=COMPLETION)
                    status: int | str = response.status_code
                except httpx.HTTPError as exc:
                    status = repr(exc)
                self.results.append((sent, status))
                self._stop.wait(0.05)

    def wait_for(self, count: int, sent_after: float = 0.0) -> None:
        """Until ``count`` requests were sent after ``sent_after`` (10 s at most)."""
        deadline = time.monotonic() + 10
        while sum(at > sent_after for at, _ in self.results) < count:
            assert time.monotonic() < deadline, "normal traffic stopped"
            time.sleep(0.05)

    @contextlib.contextmanager
    def running(self) -> Iterator[NormalTraffic]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=15)


def raw_post(body: bytes, *headers: bytes) -> bytes:
    """A chat completion POST with extra header lines."""
    lines = [b"POST /v1/chat/completions HTTP/1.1", b"host: x", b"content-type: application/json",
             b"content-length: %d" % len(body), *headers]  # fmt: skip
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
