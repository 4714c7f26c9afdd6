"""A cache hit and the output cap the gateway writes for a key with a ``tpm``, through
real gateways, a real redis-server and a stub engine of their own.

The key is computed from the client's body; the engine gets ``max_tokens`` capped to
what the key's budget grants (``ratelimit.default_max_tokens`` when the client set
none). An entry made under another cap (none, a larger one, a smaller one) must not
answer a request whose answer the engine would make under this one: a hit never
gives a client more completion tokens than it was allowed, and an answer the
gateway's cap cut short never answers a request that may have more.

Two gateways share Redis and the cache's namespace, and know the same API key (same
name, same secret): one gives it a ``tpm``, the other none, as one gateway would
before and after a limit change (or during a ``fail_open`` window)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY = "sk-cache-cap-0123456789"
BUDGET_KEY = "sk-cache-budget-0123456789"
DEFAULT_CAP = 8  # ratelimit.default_max_tokens of the capping gateway
STUB_TOKENS = 16  # what the stub generates unless max_tokens stops it first
BUDGET_TPM = 1000


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL, "--tokens", str(STUB_TOKENS))


def config(engine: Stub, redis_url: str, keys: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": keys},
        "ratelimit": {"default_max_tokens": DEFAULT_CAP},
        "cache": {"enabled": True, "namespace": f"cap-{RUN}"},
    }


@pytest.fixture(scope="module")
def capping(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys = [
        {"name": f"cap-{RUN}", "key": KEY, "tpm": 100000},
        {"name": f"budget-{RUN}", "key": BUDGET_KEY, "tpm": BUDGET_TPM},
    ]
    config_ = config(engine, redis_url, keys)
    yield from start_gateway(config_, tmp_path_factory.mktemp("cache-capping"))


@pytest.fixture(scope="module")
def uncapped(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config_ = config(engine, redis_url, [{"name": f"cap-{RUN}", "key": KEY}])
    yield from start_gateway(config_, tmp_path_factory.mktemp("cache-uncapped"))


def calls(engine: Stub) -> int:
    return int(engine.stats()["requests"])


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": STUB_MODEL, "temperature": 0,
            "messages": [{"role": "user", "content": f"{RUN} {text}"}], **extra}  # fmt: skip


def post(gateway: Gateway, body: dict[str, Any], key: str = KEY) -> httpx.Response:
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    return response


def completion(response: httpx.Response) -> tuple[int, str]:
    answer = response.json()
    return answer["usage"]["completion_tokens"], answer["choices"][0]["finish_reason"]


def test_an_uncapped_entry_never_answers_a_capped_request(
    capping: Gateway, uncapped: Gateway, engine: Stub
) -> None:
    body = ask("uncapped first")
    before = calls(engine)
    first = post(uncapped, body)  # no tpm: no cap, the stub's whole answer
    assert first.headers["x-cache"] == "MISS"
    assert completion(first) == (STUB_TOKENS, "stop")
    capped = post(capping, body)  # the same key with a tpm: at most DEFAULT_CAP tokens
    assert capped.headers["x-cache"] == "MISS"
    assert completion(capped) == (DEFAULT_CAP, "length")
    assert calls(engine) == before + 2
    # The longer entry was kept: the uncapped request still hits it.
    again = post(uncapped, body)
    assert again.headers["x-cache"] == "HIT"
    assert completion(again) == (STUB_TOKENS, "stop")
    assert calls(engine) == before + 2


def test_an_answer_the_gateway_cut_never_answers_an_uncapped_request(
    capping: Gateway, uncapped: Gateway, engine: Stub
) -> None:
    body = ask("capped first")
    before = calls(engine)
    first = post(capping, body)  # cut by the gateway's cap, not by the client
    assert first.headers["x-cache"] == "MISS"
    assert completion(first) == (DEFAULT_CAP, "length")
    same_cap = post(capping, body)
    assert same_cap.headers["x-cache"] == "HIT"  # under the same cap: the same answer
    assert calls(engine) == before + 1
    whole = post(uncapped, body)  # no cap: the engine would say more
    assert whole.headers["x-cache"] == "MISS"
    assert completion(whole) == (STUB_TOKENS, "stop")
    assert calls(engine) == before + 2
    again = post(uncapped, body)
    assert again.headers["x-cache"] == "HIT"
    assert completion(again) == (STUB_TOKENS, "stop")


def test_a_client_cut_answer_hits_whatever_the_gateway_cap_above_it(
    capping: Gateway, uncapped: Gateway, engine: Stub
) -> None:
    """An answer cut by the client's own ``max_tokens`` (it is in the key) is the answer
    of every request with a gateway cap at least as large, or none."""
    body = ask("client cap", max_tokens=4)
    before = calls(engine)
    first = post(capping, body)
    assert completion(first) == (4, "length")
    hits = [post(capping, body), post(uncapped, body)]
    assert [r.headers["x-cache"] for r in hits] == ["HIT", "HIT"]
    assert calls(engine) == before + 1


def test_a_hit_never_exceeds_what_a_short_budget_grants(capping: Gateway, engine: Stub) -> None:
    """One gateway, one key: an entry stored while the budget had room is not the
    answer of the same request once the budget grants fewer tokens than it holds."""
    body = ask("budget", max_tokens=40)
    before = calls(engine)
    first = post(capping, body, BUDGET_KEY)
    assert first.headers["x-cache"] == "MISS"
    assert completion(first) == (STUB_TOKENS, "stop")
    prompt_estimate = BUDGET_TPM - int(first.headers["x-ratelimit-remaining-tokens"]) - 40
    used = first.json()["usage"]["total_tokens"]
    # A filler with a prompt as long (the stub counts it alike) leaves this request's
    # prompt and 5 tokens: the budget grants it 5 output tokens.
    filler_prompt = first.json()["usage"]["prompt_tokens"]
    tokens = BUDGET_TPM - used - filler_prompt - (prompt_estimate + 5)
    filler = ask("budgeX", max_tokens=tokens, stub={"tokens": tokens})
    assert completion(post(capping, filler, BUDGET_KEY)) == (tokens, "length")
    short = post(capping, body, BUDGET_KEY)
    assert short.headers["x-ratelimit-remaining-tokens"] == "0"
    assert completion(short) == (5, "length")  # the engine's answer, not the entry's 16
    assert short.headers["x-cache"] == "BYPASS"  # a shortened answer: neither kept nor shared
    assert calls(engine) == before + 3


def streamed(gateway: Gateway, body: dict[str, Any]) -> tuple[str, int, str]:
    """``(X-Cache, completion tokens, finish reason)`` of a streamed request."""
    body = body | {"stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200, response.text
    events = [
        orjson.loads(line[5:])
        for line in response.text.split("\n\n")
        if line.startswith("data:") and line != "data: [DONE]"
    ]
    finish = next(e["choices"][0]["finish_reason"] for e in events if e["choices"][-1:] and
                  e["choices"][0]["finish_reason"])  # fmt: skip
    return response.headers["x-cache"], events[-1]["usage"]["completion_tokens"], finish


def test_a_streamed_entry_keeps_the_same_rules(
    capping: Gateway, uncapped: Gateway, engine: Stub
) -> None:
    body = ask("streamed")
    assert streamed(uncapped, body) == ("MISS", STUB_TOKENS, "stop")
    assert streamed(capping, body) == ("MISS", DEFAULT_CAP, "length")
    assert streamed(uncapped, body) == ("HIT", STUB_TOKENS, "stop")
    other = ask("streamed, capped first")
    assert streamed(capping, other) == ("MISS", DEFAULT_CAP, "length")
    assert streamed(capping, other) == ("HIT", DEFAULT_CAP, "length")
    assert streamed(uncapped, other) == ("MISS", STUB_TOKENS, "stop")
