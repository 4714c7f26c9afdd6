"""`vgate engines run`: a second SIGINT/SIGTERM stops engines without waiting for running
requests (a first one drains them, for up to ``drain_timeout_s``).

Before, the second signal did nothing at all: an operator pressing Ctrl-C again waited
out the whole drain (30 s by default, plus the stop), with nothing said.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from engines.registry import REDIS_KEY, EngineRecord
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL

DRAIN_S = 60  # far longer than the test may take: only the second signal ends it


def records(url: str) -> list[EngineRecord]:
    client = redis.Redis.from_url(url)
    try:
        return [EngineRecord.decode(v) for v in client.hgetall(REDIS_KEY).values()]
    finally:
        client.close()


def running_requests(engine: EngineRecord) -> str:
    headers = {"Authorization": f"Bearer {engine.api_key}"}
    metrics = httpx.get(f"{engine.url}/metrics", headers=headers).text
    return next(
        line.rsplit(" ", 1)[1]
        for line in metrics.splitlines()
        if line.startswith("vllm:num_requests_running")
    )


@pytest.fixture
def supervisor(redis_url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    redis.Redis.from_url(redis_url).delete(REDIS_KEY)
    config = {
        "redis": {"url": redis_url},
        "engines": {"heartbeat_s": 0.3, "log_dir": str(tmp_path)},
        "models": [
            {
                "name": STUB_MODEL,
                "engine": {
                    "kind": "stub",
                    "health": {"interval_s": 0.2, "drain_timeout_s": DRAIN_S, "stop_timeout_s": 1},
                },
            }
        ],
    }
    path = tmp_path / "engines.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "gateway", "engines", "run", "--config", str(path)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_a_second_signal_stops_engines_without_draining(
    supervisor: subprocess.Popen[bytes], redis_url: str, signum: int
) -> None:
    holds_soon(lambda: [r.state for r in records(redis_url)] == ["ready"], 30, "no ready engine")
    engine = records(redis_url)[0]
    body = {
        "model": STUB_MODEL,
        "messages": [{"role": "user", "content": "long"}],
        "stream": True,
        "stub": {"tokens": 10_000, "itl_ms": 100},  # ~17 minutes of stream
    }
    headers = {"Authorization": f"Bearer {engine.api_key}"}
    with httpx.stream(
        "POST", f"{engine.url}/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as stream:
        lines = stream.iter_lines()  # held: a generator let go closes the stream
        assert next(lines).startswith("data: ")
        assert float(running_requests(engine)) == 1  # what the drain waits on
        os.kill(supervisor.pid, signum)
        holds_soon(lambda: [r.state for r in records(redis_url)] == ["draining"], 10)
        assert supervisor.poll() is None, "the first signal must drain, not stop at once"
        started = time.monotonic()
        os.kill(supervisor.pid, signum)
        assert supervisor.wait(timeout=15) == 0
    assert time.monotonic() - started < 10  # the stop (1 s) and its margins, not the drain
    assert records(redis_url) == []
