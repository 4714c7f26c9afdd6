"""One real vLLM stack per test session: `vgate up` with the embedded default model
and a second engine of the same model with ngram speculative decoding.

Slow by nature (each engine warms up for minutes on a CPU); every e2e test
shares these engines.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.helpers.processes import free_port, run_process

DEFAULT_MODEL = "smollm2-135m"
SPEC_MODEL = "smollm2-135m-ngram"
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
STARTUP_TIMEOUT_S = 1500


class Stack:
    """The running `vgate up`; ``admin_url`` is its operator listener (the detailed /ready)."""

    def __init__(self, url: str, admin_url: str) -> None:
        self.url = url
        self.base_url = f"{url}/v1"
        self.admin_url = admin_url

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **kwargs)  # type: ignore[arg-type]

    def engine_url(self, model: str) -> str:
        engines = httpx.get(f"{self.admin_url}/ready").json()["engines"][model]
        healthy: list[str] = [url for url, ok in engines.items() if ok]
        assert len(healthy) == 1, engines
        return healthy[0]


def engine_config(log_dir: Path) -> dict[str, object]:
    probe = {"probe_interval_s": 20, "probe_timeout_s": 120, "startup_timeout_s": 1200}
    return {
        "engines": {"log_dir": str(log_dir)},
        "upstream": {"health_interval_s": 1},
        "models": [
            {
                "name": DEFAULT_MODEL,
                "engine": {
                    "source": "default",
                    "dtype": "float32",
                    "max_model_len": 2048,
                    "health": probe,
                    "restart": {"backoff_initial_s": 1},
                },
            },
            {
                "name": SPEC_MODEL,
                "engine": {
                    "source": "default",
                    "dtype": "float32",
                    "max_model_len": 2048,
                    "speculative": NGRAM,
                    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
                    "health": probe,
                },
            },
        ],
    }


def _wait_all_engines(admin_url: str, deadline: float) -> None:
    while True:
        engines = httpx.get(f"{admin_url}/ready").json()["engines"]
        if all(any(engines.get(m, {}).values()) for m in (DEFAULT_MODEL, SPEC_MODEL)):
            return
        assert time.monotonic() < deadline, f"engines not ready: {engines}"
        time.sleep(1)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("e2e")
    config = directory / "vgate.yaml"
    config.write_text(yaml.safe_dump(engine_config(directory / "logs")))
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "gateway", "up", "--config", str(config), "--port", str(port),
            "--admin-port", str(admin)]  # fmt: skip
    started = time.monotonic()
    with run_process(argv, f"http://127.0.0.1:{port}/ready", timeout=STARTUP_TIMEOUT_S):
        _wait_all_engines(f"http://127.0.0.1:{admin}", started + STARTUP_TIMEOUT_S)
        print(f"\ne2e stack ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
        yield Stack(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}")
        for log in sorted((directory / "logs").glob("*.log")):
            if os.environ.get("VGATE_E2E_SHOW_LOGS"):
                print(log.read_text()[-3000:], file=sys.stderr)


def serve_in_front(stack: Stack, directory: Path, **sections: object) -> Iterator[str]:
    """A second `vgate serve` in front of the stack's default engine, with ``sections``
    added to its config; yields its /v1 base URL."""
    config = {"models": [{"name": DEFAULT_MODEL, "endpoints": [stack.engine_url(DEFAULT_MODEL)]}]}
    path = directory / "vgate.yaml"
    path.write_text(yaml.safe_dump(config | sections))
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    with run_process(argv, f"http://127.0.0.1:{port}/ready", timeout=60):
        yield f"http://127.0.0.1:{port}/v1"
