"""One real vLLM stack per test session: `vgate up` with the models it serves by
default (the chat model, here with two replicas and a LoRA adapter, and the
embeddings model), plus a second chat engine with ngram speculative decoding.

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

from engines.models.prepare import default_engine_python
from gateway.cli.stack import default_models
from tests.helpers.lora import build_lora_adapter
from tests.helpers.processes import free_port, run_process

DEFAULT_MODEL = "smollm2-135m"
EMBEDDINGS_MODEL = "all-minilm-l6-v2"
LORA_MODEL = "smollm2-135m-lora"
SPEC_MODEL = "smollm2-135m-ngram"
ENGINE_KEY = "e2e-engine-key-0123456789"
"""The engines' API key (vLLM's --api-key): the stack's models and every gateway put in
front of their engines send it."""
EMBEDDINGS_PROBE_S = 3.0
"""The embeddings engine's stuck-probe period here (short, so that a test sees several)."""
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
STARTUP_TIMEOUT_S = 1500
READY_TIMEOUT_S = 30.0
"""One read of the operator's /ready: while four engines warm up on two cores the
gateway process gets little CPU, and a 5 s read has timed out (CI, 2026-11-30)."""


class Stack:
    """The running `vgate up`; ``admin_url`` is its operator listener (the detailed /ready)."""

    def __init__(self, url: str, admin_url: str) -> None:
        self.url = url
        self.base_url = f"{url}/v1"
        self.admin_url = admin_url

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **kwargs)  # type: ignore[arg-type]

    def engine_urls(self, model: str) -> list[str]:
        """The model's healthy engines (display URLs, sorted)."""
        ready = httpx.get(f"{self.admin_url}/ready", timeout=READY_TIMEOUT_S)
        engines = ready.json()["engines"][model]
        return sorted(url for url, ok in engines.items() if ok)

    def engine_url(self, model: str) -> str:
        healthy = self.engine_urls(model)
        assert len(healthy) == 1, healthy
        return healthy[0]


def engine_config(log_dir: Path, lora_dir: Path) -> dict[str, object]:
    """`vgate up`'s default models, as it builds them, with test-sized settings: the chat
    model gets a second replica and a LoRA adapter, every engine patient probes."""
    probe = {"probe_interval_s": 20, "probe_timeout_s": 120, "startup_timeout_s": 1200}
    chat, embeddings = (m.model_dump(mode="json", exclude_defaults=True) for m in default_models())
    assert (chat["name"], embeddings["name"]) == (DEFAULT_MODEL, EMBEDDINGS_MODEL)
    chat["engine"] |= {
        "replicas": 2,
        "lora_modules": [{"name": LORA_MODEL, "path": str(lora_dir)}],
        "max_lora_rank": 8,
        "health": probe,
        "restart": {"backoff_initial_s": 1},
    }
    embeddings["engine"] |= {"health": probe | {"probe_interval_s": EMBEDDINGS_PROBE_S}}
    chat["api_key"] = embeddings["api_key"] = ENGINE_KEY
    return {
        "engines": {"log_dir": str(log_dir)},
        "upstream": {"health_interval_s": 1},
        # Priority tiers on: every engine schedules by vLLM's per-request priority
        # (test_priority_vllm.py); requests without a tier keep priority 0, i.e. FIFO.
        "routing": {"priority_tiers": True},
        "models": [
            chat,
            embeddings,
            {
                "name": SPEC_MODEL,
                "api_key": ENGINE_KEY,
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
        try:
            engines = httpx.get(f"{admin_url}/ready", timeout=READY_TIMEOUT_S).json()["engines"]
        except httpx.TimeoutException:  # a starved gateway: not an answer, ask again
            assert time.monotonic() < deadline, "the gateway's /ready never answered"
            continue
        healthy = {m: sum(engines.get(m, {}).values()) for m in engines}
        if healthy.get(DEFAULT_MODEL) == 2 and all(
            healthy.get(m) for m in (EMBEDDINGS_MODEL, SPEC_MODEL, LORA_MODEL)
        ):
            return
        assert time.monotonic() < deadline, f"engines not ready: {engines}"
        time.sleep(1)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("e2e")
    lora = build_lora_adapter(directory / "lora", default_engine_python(), DEFAULT_MODEL)
    config = directory / "vgate.yaml"
    config.write_text(yaml.safe_dump(engine_config(directory / "logs", lora)))
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


def serve_in_front(
    stack: Stack, directory: Path, model: str = DEFAULT_MODEL, **sections: object
) -> Iterator[str]:
    """A second `vgate serve` in front of the stack's engines of ``model``, with ``sections``
    added to its config; yields its /v1 base URL."""
    endpoints = stack.engine_urls(model)
    config = {"models": [{"name": model, "endpoints": endpoints, "api_key": ENGINE_KEY}]}
    path = directory / "vgate.yaml"
    path.write_text(yaml.safe_dump(config | sections))
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    with run_process(argv, f"http://127.0.0.1:{port}/ready", timeout=60):
        yield f"http://127.0.0.1:{port}/v1"
