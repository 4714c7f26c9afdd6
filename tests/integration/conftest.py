"""Real processes for integration tests: stub engines and gateways on loopback ports."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.helpers.processes import free_port, run_process

STUB_MODEL = "stub-model"


class Stub:
    """A running stub engine and its control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stub/stats").json()  # type: ignore[no-any-return]

    def reset(self) -> None:
        httpx.post(f"{self.url}/stub/reset").raise_for_status()


class Gateway:
    """A running ``vgate serve`` and clients pointed at it.

    ``admin_url`` is its operator listener (``server.admin_port``), where /metrics,
    /sd/engines, the detailed /ready and /admin/* are served (None: it has none)."""

    def __init__(self, url: str, admin_url: str | None = None) -> None:
        self.url = url
        self.base_url = f"{url}/v1"
        self.admin_url = admin_url

    def client(self, **kwargs: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **kwargs)

    def async_client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key="unused", max_retries=0, **kwargs)

    def metrics(self) -> str:
        return httpx.get(f"{self.operator_url}/metrics").text

    def ready(self) -> dict[str, Any]:
        """The detailed /ready (engines by display URL, background tasks)."""
        detail: dict[str, Any] = httpx.get(f"{self.operator_url}/ready").json()
        return detail

    @property
    def operator_url(self) -> str:
        assert self.admin_url is not None, "this gateway has no operator listener"
        return self.admin_url


def start_stub(*flags: str) -> Generator[Stub, None, None]:
    port = free_port()
    argv = [sys.executable, "-m", "engines.stub", "--port", str(port), *flags]
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30):
        yield Stub(f"http://127.0.0.1:{port}")


def start_gateway(config: dict[str, Any], directory: Path) -> Generator[Gateway, None, None]:
    """``vgate serve`` with ``config``, plus an operator listener on a free port unless
    the config sets ``server.admin_port`` itself (None: no operator listener)."""
    port = free_port()
    server = {"admin_port": free_port(), **config.get("server", {})}
    path = directory / f"vgate-{port}.yaml"
    path.write_text(yaml.safe_dump({**config, "server": server}))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)]
    admin = server["admin_port"]
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30):
        yield Gateway(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}" if admin else None)


@pytest.fixture(scope="session")
def stub() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="session")
def dead_url() -> str:
    """A loopback URL where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def gateway(
    stub: Stub, dead_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [stub.url]},
            {"name": "dead-model", "endpoints": [dead_url]},
            {"name": "alias-model", "endpoints": [stub.url], "upstream_model": STUB_MODEL},
        ],
        # The error tests inject 5xx and timeouts on purpose; a breaker opened by them
        # would turn later, unrelated tests into 503s. The breaker has its own tests.
        "upstream": {
            "read_timeout_s": 1.5,
            "health_interval_s": 0.5,
            "retries": 1,
            "breaker_failures": 1000,
        },
        "server": {"max_body_bytes": 64 * 1024},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("gateway"))
