"""Redis answering errors under load: full (``OOM`` under ``noeviction``), its scripts
flushed (``NOSCRIPT``), every client connection killed (``CLIENT KILL TYPE normal``).

Clients (the official SDK streaming, raw httpx streaming and not) keep asking through
a gateway whose key has a concurrency limit. Whatever Redis does, each gets an answer
or an OpenAI-shaped error (never a 500, never a stream cut without an error), in
bounded time; the policy holds (``fail_closed``: 503 ``rate_limiter_unavailable``
while Redis refuses writes; ``local``: decided in memory, never a 503); and once
Redis heals the key can run its ``max_concurrent`` requests at once again at once,
not after the lease (60 s) of a slot nobody freed. No background task logs a failure.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.helpers.background_load import BackgroundLoad
from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL, Gateway, start_gateway, start_stub

KEY = "sk-fault-hunt-redis-0123456789"
MAX_CONCURRENT = 2
BODY = {"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
LIMITER_ERRORS = 'vgate_redis_errors_total{component="ratelimit"}'
SLOWEST_S = 8.0
"""No answer may take longer: Redis calls give up after 0.5 s, the stub answers in
well under a second; generous for a loaded 2-core machine."""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    shaped: bool  # 200 complete ([DONE] for a stream), or an OpenAI-shaped error
    took: float
    code: str | None = None


def _code_of(payload: bytes) -> tuple[bool, str | None]:
    try:
        error = json.loads(payload)["error"]
        return all(k in error for k in ("message", "type", "code")), error["code"]
    except (ValueError, KeyError, TypeError):
        return False, None


def ask(gateway: Gateway, kind: str) -> Outcome:
    began = time.monotonic()
    headers = {"Authorization": f"Bearer {KEY}"}
    url = f"{gateway.base_url}/chat/completions"
    if kind == "sdk":
        client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0)
        try:
            chunks = list(client.chat.completions.create(**BODY, stream=True))  # type: ignore[call-overload]
            return Outcome(200, bool(chunks), time.monotonic() - began)
        except openai.APIStatusError as exc:
            shaped, code = _code_of(exc.response.content)
            return Outcome(exc.status_code, shaped, time.monotonic() - began, code)
        except openai.APIConnectionError as exc:  # cut with no error: never acceptable
            return Outcome(0, False, time.monotonic() - began, repr(exc))
        except openai.APIError as exc:  # the stream ended with an error event
            return Outcome(200, bool(exc.message), time.monotonic() - began)
        finally:
            client.close()
    if kind == "stream":
        with httpx.stream("POST", url, json={**BODY, "stream": True}, headers=headers) as r:
            body = r.read()
        took = time.monotonic() - began
        if r.status_code == 200:  # complete, or ended by an error event and [DONE]
            return Outcome(200, body.rstrip().endswith(b"data: [DONE]"), took)
        return Outcome(r.status_code, *_shaped_outcome(body, took))
    response = httpx.post(url, json=BODY, headers=headers)
    took = time.monotonic() - began
    if response.status_code == 200:
        return Outcome(200, "choices" in response.json(), took)
    return Outcome(response.status_code, *_shaped_outcome(response.content, took))


def ask_safely(gateway: Gateway, kind: str) -> Outcome:
    """:func:`ask`, with any exception (a connection cut, a malformed answer) an
    outcome that fails the test rather than a thread that dies quietly."""
    try:
        return ask(gateway, kind)
    except Exception as exc:
        return Outcome(0, False, 0.0, repr(exc))


def _shaped_outcome(body: bytes, took: float) -> tuple[bool, float, str | None]:
    shaped, code = _code_of(body)
    return shaped, took, code


def _all_slots_free(gateway: Gateway) -> bool:
    """``MAX_CONCURRENT`` streams at once, all admitted."""
    results: list[Outcome] = []
    threads = [
        threading.Thread(target=lambda: results.append(ask(gateway, "stream")))
        for _ in range(MAX_CONCURRENT)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return all(o.status == 200 for o in results)


@contextlib.contextmanager
def _faults(
    admin: redis.Redis, load: BackgroundLoad[Outcome], gateway: Gateway
) -> Iterator[Callable[[], None]]:
    """Each fault in turn, each held until the load has had a few answers under it (a
    full Redis until a limiter call failed: a batch whose first write frees memory, a
    settlement's ``ZREM``, runs whole under ``OOM``, so a few answers did not prove one
    had failed); Redis healthy on leaving."""

    def under_load() -> None:  # a few more answers while the fault lasts
        seen = len(load.outcomes)
        holds_soon(lambda: len(load.outcomes) >= seen + 4, 10.0, "no answers under the fault")

    def inject() -> None:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)  # full: writes fail with OOM
        holds_soon(lambda: LIMITER_ERRORS in gateway.metrics(), 10.0, "no limiter call failed")
        under_load()
        admin.config_set("maxmemory", 0)
        under_load()
        for _ in range(3):
            admin.script_flush()  # the limiter's script is gone: NOSCRIPT
            under_load()
        for _ in range(3):
            admin.client_kill_filter(_type="normal")  # the gateway's too
            under_load()

    try:
        yield inject
    finally:
        with contextlib.suppress(redis.RedisError):
            admin.config_set("maxmemory", 0)


@pytest.mark.parametrize("policy", ["local", "fail_closed"])
def test_redis_errors_under_load_keep_every_promise(
    policy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs = tmp_path / "logs"
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(logs))
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        stub = stack.enter_context(
            contextlib.contextmanager(start_stub)(
                "--model", STUB_MODEL, "--itl-ms", "20", "--tokens", "8"
            )
        )
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
            "redis": {"url": redis_url, "timeout_s": 0.5, "retry_s": 0.2},
            "auth": {
                "enabled": True,
                "keys": [
                    {
                        "name": "hunt",
                        "key": KEY,
                        "rpm": 100_000,
                        "tpm": 10_000_000,
                        "max_concurrent": MAX_CONCURRENT,
                    }
                ],
            },
            "ratelimit": {"on_redis_error": policy},  # lease: the default 60 s
        }
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(config, tmp_path))
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        assert _all_slots_free(gateway)
        with _load(gateway) as load, _faults(admin, load, gateway) as inject:
            holds_soon(lambda: len(load.outcomes) >= 6, 10.0, "no traffic before the faults")
            inject()
            seen = len(load.outcomes)
            holds_soon(lambda: len(load.outcomes) >= seen + 4, 10.0, "no answers after the faults")
        outcomes = load.outcomes
        assert outcomes
        assert all(o.shaped for o in outcomes), [o for o in outcomes if not o.shaped]
        assert {o.status for o in outcomes} <= {200, 429, 503}, outcomes
        assert max(o.took for o in outcomes) < SLOWEST_S
        unavailable = {o.code for o in outcomes if o.status == 503}
        if policy == "fail_closed":
            assert unavailable == {"rate_limiter_unavailable"}, outcomes  # OOM: no admission
        else:
            assert not unavailable, outcomes  # decided locally all along
        # Healed: the key runs MAX_CONCURRENT at once again within seconds, not a lease.
        holds_soon(lambda: _all_slots_free(gateway), 5.0, "a concurrency slot stayed taken")
        assert LIMITER_ERRORS in gateway.metrics()
        ready = gateway.ready()
        assert ready["redis"] == "reachable", ready
        assert all(task["failures"] == 0 for task in ready["background"].values()), ready
    log_text = "\n".join(p.read_text(errors="replace") for p in logs.glob("*gateway*"))
    assert "vgate gateway on" in log_text  # the gateway's own log was read
    assert "Traceback" not in log_text
    assert "never retrieved" not in log_text


def _load(gateway: Gateway) -> BackgroundLoad[Outcome]:
    """Clients asking without pause, each its own way."""
    return BackgroundLoad(lambda kind: ask_safely(gateway, kind), ("sdk", "stream", "plain"))
