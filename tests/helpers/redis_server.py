"""A real ``redis-server`` on a free loopback port, for the duration of a test session."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator

import redis

from tests.helpers.processes import free_port, run_process


@contextlib.contextmanager
def run_redis(port: int | None = None) -> Iterator[str]:
    """Start redis-server (no persistence) and yield its URL once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run scripts/bootstrap.sh")
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    with run_process(argv, ready_url=None):
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
