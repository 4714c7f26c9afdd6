"""Routing across three stub engines: the engine header (``server.debug_headers``: the
engine's id, never its URL), and prefix affinity."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.pool.display import engine_id
from tests.helpers.processes import free_port, run_process
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

SYSTEM = "You are a meticulous assistant for the accounts team. " * 4
DEBUG = {"debug_headers": True}  # x-vgate-engine on every forwarded answer


@pytest.fixture(scope="module")
def three_stubs() -> Iterator[list[Stub]]:
    runners = [start_stub("--model", STUB_MODEL) for _ in range(3)]
    try:
        yield [next(r) for r in runners]
    finally:
        for runner in runners:
            runner.close()


def _gateway(stubs: list[Stub], policy: str, tmp: Path) -> Generator[Gateway, None, None]:
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": [s.url for s in stubs], "routing": {"policy": policy}}
        ],
        "server": DEBUG,
    }
    return start_gateway(config, tmp)


def _engine_for(
    gateway: Gateway, messages: list[ChatCompletionMessageParam], **headers: str
) -> str:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=STUB_MODEL,
        messages=messages,
        extra_headers=headers,
    )
    return raw.headers["x-vgate-engine"]


def test_round_robin_spreads_and_names_the_engine(three_stubs: list[Stub], tmp_path: Path) -> None:
    runner = _gateway(three_stubs, "round_robin", tmp_path)
    gateway = next(runner)
    try:
        served = {_engine_for(gateway, [{"role": "user", "content": "hi"}]) for _ in range(6)}
        assert served == {engine_id(s.url) for s in three_stubs}
        assert all(len(name) == 8 and "127.0.0.1" not in name for name in served)
    finally:
        runner.close()


def test_prefix_affinity_keeps_a_conversation_on_one_engine(
    three_stubs: list[Stub], tmp_path: Path
) -> None:
    runner = _gateway(three_stubs, "prefix_affinity", tmp_path)
    gateway = next(runner)
    try:
        conversations: list[list[ChatCompletionMessageParam]] = [
            [{"role": "system", "content": f"{SYSTEM} Customer {n}."}] for n in range(12)
        ]
        homes = []
        for conversation in conversations:
            turns = {
                _engine_for(gateway, [*conversation, {"role": "user", "content": f"turn {t}"}])
                for t in range(4)
            }
            assert len(turns) == 1, "one conversation was spread over several engines"
            homes.append(turns.pop())
        assert len(set(homes)) >= 2, "all conversations landed on one engine"
        sessions = {_engine_for(gateway, [{"role": "user", "content": f"q{t}"}],
                                **{"x-session-id": "s-42"}) for t in range(4)}  # fmt: skip
        assert len(sessions) == 1
    finally:
        runner.close()


@contextlib.contextmanager
def beside_a_broken_engine(
    good: Stub, status: int, upstream: Mapping[str, object], tmp: Path
) -> Iterator[tuple[Gateway, Stub]]:
    """A round-robin gateway over ``good`` and a stub that answers every request ``status``."""
    broken = start_stub("--model", STUB_MODEL, "--fail-status", str(status))
    bad = next(broken)
    config = {
        "models": [
            {
                "name": STUB_MODEL,
                "endpoints": [bad.url, good.url],
                "routing": {"policy": "round_robin"},
            }
        ],
        "upstream": upstream,
        "server": DEBUG,
    }
    runner = start_gateway(config, tmp)
    try:
        yield next(runner), bad
    finally:
        runner.close()
        broken.close()


def test_engine_answering_500_is_bypassed_without_client_errors(
    three_stubs: list[Stub], tmp_path: Path
) -> None:
    with beside_a_broken_engine(three_stubs[0], 500, {"retries": 1}, tmp_path) as (gateway, bad):
        client = gateway.client()
        for _ in range(6):
            reply = client.chat.completions.create(
                model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
            stream = client.chat.completions.create(
                model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            assert any(c.choices and c.choices[0].delta.content for c in stream)
        assert bad.stats()["requests"] >= 3, "round robin should have tried the broken engine"
        assert f'vgate_retries_total{{model="{STUB_MODEL}"}}' in gateway.metrics()


def test_breaker_takes_a_failing_engine_out_of_rotation(
    three_stubs: list[Stub], tmp_path: Path
) -> None:
    upstream = {"retries": 1, "breaker_failures": 2, "breaker_cooldown_s": 60}
    with beside_a_broken_engine(three_stubs[1], 503, upstream, tmp_path) as (gateway, bad):
        client = gateway.client()
        for _ in range(10):
            client.chat.completions.create(
                model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert bad.stats()["requests"] == 2, "the breaker should open after two failures"


def test_breaker_closes_again_once_the_engine_recovers(
    three_stubs: list[Stub], tmp_path: Path
) -> None:
    """Open after two failures; after the cool-down one trial request goes to the engine,
    and as it now answers, the breaker closes and the engine takes its share again."""
    port = free_port()
    flaky_url = f"http://127.0.0.1:{port}"
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [flaky_url, three_stubs[2].url],
                    "routing": {"policy": "round_robin"}}],
        "upstream": {"retries": 1, "breaker_failures": 2, "breaker_cooldown_s": 1.0,
                     "health_interval_s": 0.2},
        "server": DEBUG,
    }  # fmt: skip
    failing = [sys.executable, "-m", "engines.stub", "--port", str(port), "--model", STUB_MODEL,
               "--fail-status", "503"]  # fmt: skip
    healthy = failing[: failing.index("--fail-status")]
    with contextlib.ExitStack() as stack:
        broken = stack.enter_context(run_process(failing, f"{flaky_url}/health"))
        gateway = next(stack.enter_context(contextlib.closing(start_gateway(config, tmp_path))))
        _wait_healthy(gateway, flaky_url)
        served = [_engine_for(gateway, [{"role": "user", "content": "hi"}]) for _ in range(6)]
        assert set(served) == {engine_id(three_stubs[2].url)}  # all answered by the good one
        assert f'vgate_engine_breaker_open{{engine="{flaky_url}"}} 1.0' in gateway.metrics()
        broken.kill()
        broken.wait()
        stack.enter_context(run_process(healthy, f"{flaky_url}/health"))
        _wait_healthy(gateway, flaky_url)
        time.sleep(1.2)  # the cool-down passes
        served = [_engine_for(gateway, [{"role": "user", "content": "hi"}]) for _ in range(6)]
        assert engine_id(flaky_url) in served  # the trial succeeded: back in rotation
        assert f'vgate_engine_breaker_open{{engine="{flaky_url}"}} 0.0' in gateway.metrics()


def _wait_healthy(gateway: Gateway, url: str, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not gateway.ready()["engines"][STUB_MODEL].get(url):
        assert time.monotonic() < deadline, f"{url} never became healthy"
        time.sleep(0.05)
