"""``server.workers > 1`` without ``redis.url``: each worker keeps its own stored
responses, so an SDK client whose follow-up (``previous_response_id``) or ``retrieve``
reaches another worker gets a 404 for a response it has just made. Such a config
still starts (a deployment without the Responses API loses nothing), and start-up
says so, naming the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers.processes import free_port, run_process


def test_two_workers_without_redis_warn_that_stored_responses_are_per_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    config = tmp_path / "vgate.yaml"
    config.write_text(f"models: [{{name: m, endpoints: ['http://127.0.0.1:{free_port()}']}}]\n")
    logs = tmp_path / "logs"
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(logs))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config),
            "--port", str(port), "--workers", "2"]  # fmt: skip
    with run_process(argv, f"http://127.0.0.1:{port}/health"):
        pass
    (log,) = logs.iterdir()
    text = log.read_text()
    assert "each worker keeps its own stored responses" in text, text[-3000:]
    assert "set redis.url to share them" in text
