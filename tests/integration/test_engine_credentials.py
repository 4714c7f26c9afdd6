"""Credentials to engines, probes by task and LoRA adapters as models, with stub engines.

The stub demands a key when started with one (``--api-key``, or ``VLLM_API_KEY`` as a
managed engine gets it), so a request that succeeds proves the gateway's key reached
it; the stub records the last request's headers, which shows the client's did not.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest

from engines.process import EngineProcess
from engines.registry import InProcessRegistry
from engines.spec import EngineSpec
from engines.supervisor import Deployment, EngineSupervisor
from gateway.background import Periodic
from gateway.pool.engine_pool import EnginePool
from gateway.pool.sources import RegistryWatcher
from tests.integration.conftest import Gateway, Stub, start_gateway, start_stub

ENGINE_KEY = "engine-key-0123456789"
CLIENT_KEY = "client-key-abcdefghij"
MODEL = "keyed-model"


async def wait_until(condition: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


def last_authorization(stub: Stub) -> str | None:
    last = stub.stats()["last_request"]
    headers = {name.lower(): value for name, value in last["headers"].items()}
    return headers.get("authorization")


@pytest.fixture(scope="module")
def keyed_stub() -> Iterator[Stub]:
    yield from start_stub("--model", MODEL, "--api-key", ENGINE_KEY)


@pytest.fixture(scope="module")
def keyed_gateway(
    keyed_stub: Stub, tmp_path_factory: pytest.TempPathFactory, monkeysession: Any
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": MODEL, "endpoints": [keyed_stub.url], "api_key_env": "H1_ENGINE_KEY"}],
        "auth": {"enabled": True, "keys": [{"name": "client", "key": CLIENT_KEY}]},
        "upstream": {"health_interval_s": 0.2, "metrics_interval_s": 0.2},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("keyed"))


@pytest.fixture(scope="module")
def monkeysession() -> Iterator[pytest.MonkeyPatch]:
    """The engine key in the environment of the gateway process (api_key_env)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("H1_ENGINE_KEY", ENGINE_KEY)
        yield patch


def test_the_stub_refuses_requests_without_its_key(keyed_stub: Stub) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
    assert httpx.post(f"{keyed_stub.url}/v1/completions", json=body).status_code == 401
    wrong = {"Authorization": f"Bearer {CLIENT_KEY}"}
    refused = httpx.post(f"{keyed_stub.url}/v1/completions", json=body, headers=wrong)
    assert refused.status_code == 401
    assert httpx.get(f"{keyed_stub.url}/health").status_code == 200  # unguarded, as in vLLM


def test_the_engine_key_reaches_the_engine_and_the_clients_never_does(
    keyed_gateway: Gateway, keyed_stub: Stub
) -> None:
    client = openai.OpenAI(base_url=keyed_gateway.base_url, api_key=CLIENT_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert answer.choices[0].message.content
    assert last_authorization(keyed_stub) == f"Bearer {ENGINE_KEY}"
    chunks = list(client.completions.create(model=MODEL, prompt="hi", max_tokens=3, stream=True))
    assert chunks
    assert last_authorization(keyed_stub) == f"Bearer {ENGINE_KEY}"
    # The engine stays healthy: probes and scrapes carry the key too (/ready's detail).
    detail = keyed_gateway.ready()
    assert all(all(engines.values()) for engines in detail["engines"].values())


def test_the_key_shows_nowhere_in_ready_or_metrics(keyed_gateway: Gateway) -> None:
    assert ENGINE_KEY not in httpx.get(f"{keyed_gateway.operator_url}/ready").text
    assert ENGINE_KEY not in keyed_gateway.metrics()
    assert ENGINE_KEY not in httpx.get(f"{keyed_gateway.operator_url}/sd/engines").text


def stub_deployment(tmp_path: Path, name: str, **spec: Any) -> Deployment:
    engine = EngineSpec.model_validate({"kind": "stub"} | spec)
    return Deployment(name, engine, "unused", sys.executable, tmp_path)


async def test_managed_engines_get_a_generated_key_the_gateway_learns(tmp_path: Path) -> None:
    registry = InProcessRegistry()
    supervisor = EngineSupervisor([stub_deployment(tmp_path, MODEL)], registry, lambda _: None)
    pool = EnginePool({})
    watcher = RegistryWatcher(registry, pool, {}, {})
    await supervisor.start()
    try:
        assert await supervisor.wait_ready()
        await watcher.refresh()
        (record,) = await registry.records()
        assert record.api_key is not None and len(record.api_key) >= 32
        assert record.api_key not in repr(record)
        process = supervisor.slots[0].process
        assert process is not None
        assert record.api_key not in " ".join(process.plan.argv)  # never on a command line
        assert record.api_key not in repr(process.plan)
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{record.url}/v1/completions", json=body) as response:
                assert response.status == 401  # nothing else on the host can use it
            headers = pool.credentials.headers(record.url)
            async with session.post(
                f"{record.url}/v1/completions", json=body, headers=headers
            ) as response:
                assert response.status == 200
    finally:
        await supervisor.stop()


async def test_a_pooling_engine_is_probed_with_what_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over several probe intervals a pooling engine (no completions route) is never
    judged stuck: 0 restarts, and every probe succeeded."""
    outcomes: list[bool] = []
    original = EngineProcess.probe_work

    async def counted(self: EngineProcess, session: aiohttp.ClientSession, timeout: float) -> bool:
        outcome = await original(self, session, timeout)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr(EngineProcess, "probe_work", counted)
    spec = {"runner": "pooling", "health": {"interval_s": 0.05, "probe_interval_s": 0.2}}
    deployment = stub_deployment(tmp_path, "embedder", **spec)
    registry = InProcessRegistry()
    supervisor = EngineSupervisor([deployment], registry, lambda _: None)
    await supervisor.start()
    try:
        assert await supervisor.wait_ready()
        slot = supervisor.slots[0]
        assert slot.process is not None
        url = slot.process.plan.url
        headers = slot.process.plan.auth_headers()
        body = {"model": "embedder", "prompt": "hi", "max_tokens": 1}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/completions", json=body, headers=headers) as response,
        ):
            assert response.status == 404  # what a generation probe would have met
        await wait_until(lambda: len(outcomes) >= 4, 10)
        assert all(outcomes)
        assert slot.restarts == 0
        assert [r.state for r in await registry.records()] == ["ready"]
    finally:
        await supervisor.stop()


async def test_lora_adapters_are_models_routed_to_their_engines(tmp_path: Path) -> None:
    registry = InProcessRegistry()
    spec = {"lora_modules": [{"name": "sql-adapter", "path": "/unused"}]}
    supervisor = EngineSupervisor(
        [stub_deployment(tmp_path, "base", **spec), stub_deployment(tmp_path, "other")],
        registry,
        lambda _: None,
    )
    pool = EnginePool({})
    watcher = RegistryWatcher(registry, pool, {}, {})
    watching = Periodic("registry-watch", 0.05, watcher.refresh_or_keep)
    await supervisor.start()
    await watching.start()
    try:
        assert await supervisor.wait_ready()
        await wait_until(lambda: set(pool.models()) == {"base", "sql-adapter", "other"}, 5)
        base = {view.url for view in pool.snapshot("base")}
        assert {view.url for view in pool.snapshot("sql-adapter")} == base
        assert not base & {view.url for view in pool.snapshot("other")}
        (url,) = base
        body = {"model": "sql-adapter", "prompt": "hi", "max_tokens": 1}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{url}/v1/completions", json=body, headers=pool.credentials.headers(url)
            ) as response,
        ):
            assert response.status == 200
            assert (await response.json())["model"] == "sql-adapter"
    finally:
        await watching.stop()
        await supervisor.stop()


@pytest.fixture(scope="module")
def lora_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    engine = {"kind": "stub", "lora_modules": [{"name": "sql-adapter", "path": "/unused"}]}
    config = {
        "models": [{"name": "base", "engine": engine}],
        "auth": {
            "enabled": True,
            "keys": [
                {"name": "adapter-only", "key": CLIENT_KEY, "models": ["sql-adapter"]},
                {"name": "all", "key": "all-models-key-0123"},
            ],
        },
        "engines": {"log_dir": str(tmp_path_factory.mktemp("logs"))},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("lora"))


def test_a_lora_adapter_answers_under_its_name_through_the_gateway(lora_gateway: Gateway) -> None:
    """Managed engine (its key generated, learnt from the registry), adapter routed as a
    model, and a key's model allowlist applied to the adapter's name."""

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=lora_gateway.base_url, api_key=key, max_retries=0)

    def ask(client: openai.OpenAI, model: str) -> str:
        return client.completions.create(model=model, prompt="hi", max_tokens=2).model

    adapter_only, every = client(CLIENT_KEY), client("all-models-key-0123")
    deadline = time.monotonic() + 20
    while True:  # the engine becomes ready in the background
        try:
            assert ask(adapter_only, "sql-adapter") == "sql-adapter"
            break
        except openai.NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert ask(every, "base") == "base"
    with pytest.raises(openai.NotFoundError):
        ask(adapter_only, "base")
