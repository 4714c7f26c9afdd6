"""Rate limits through the gateway, with the OpenAI SDK, against a real redis-server:
requests/min, tokens/min with refund (plain and streaming), the output cap a token
limit writes into max_tokens (what is reserved is what the engine may generate),
concurrency slots, headers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
RUN = uuid.uuid4().hex[:8]  # key names (and so counters) unique to this test run
KEYS = {
    "rpm": (f"rpm-{RUN}", "sk-rpm-0123456789", {"rpm": 5}),
    "tpm": (f"tpm-{RUN}", "sk-tpm-0123456789", {"tpm": 1000}),
    "stream": (f"stream-{RUN}", "sk-stream-0123456789", {"tpm": 1000}),
    "conc": (f"conc-{RUN}", "sk-conc-0123456789", {"max_concurrent": 1}),
    "model": (f"model-{RUN}", "sk-model-0123456789", {"rpm": 100}),
}


@pytest.fixture(scope="module")
def limited(
    stub: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    keys = [{"name": name, "key": key, **limits} for name, key, limits in KEYS.values()]
    keys[-1]["model_limits"] = {STUB_MODEL: {"rpm": 2}}
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": keys},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("ratelimit"))


def client(gateway: Gateway, kind: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=KEYS[kind][1], max_retries=0)


def test_requests_per_minute_admits_exactly_the_limit(limited: Gateway) -> None:
    sdk = client(limited, "rpm")
    remaining = []
    for _ in range(5):
        raw = sdk.chat.completions.with_raw_response.create(model=STUB_MODEL, messages=MESSAGES)
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        assert raw.parse().choices[0].message.content
    assert remaining == ["4", "3", "2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    response = caught.value.response
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.json()["error"]["type"] == "requests"
    assert 1 <= int(response.headers["retry-after"]) <= 61  # a request counts 60 to 61 s
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")


def test_token_reservations_are_refunded_to_the_real_usage(limited: Gateway) -> None:
    """Each request reserves ~400 tokens (max_tokens) but uses ~10: without the refund
    only two would fit in 1000 tokens per minute; with it, all ten do."""
    sdk = client(limited, "tpm")
    used = []
    for _ in range(10):
        raw = sdk.chat.completions.with_raw_response.create(
            model=STUB_MODEL, messages=MESSAGES, max_tokens=400, extra_body={"stub": {"tokens": 5}}
        )
        used.append(raw.parse().usage.total_tokens)  # type: ignore[union-attr]
    time.sleep(0.2)  # settlements without a concurrency slot run just after the response
    # The next request's headers show what the ten really cost, plus its own reservation:
    # "hello" and 16 characters of framing make 6 prompt tokens, plus max_tokens=10.
    raw = sdk.chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=MESSAGES, max_tokens=10, extra_body={"stub": {"tokens": 5}}
    )
    left = 1000 - sum(used) - (6 + 10)
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == left
    left += 6 + 10 - raw.parse().usage.total_tokens  # type: ignore[union-attr]
    # Asking for more than is left gets what is left (after its prompt) as its max_tokens.
    raw = sdk.chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=MESSAGES, max_tokens=990, extra_body={"stub": {"tokens": 2000}}
    )
    assert raw.headers["x-ratelimit-remaining-tokens"] == "0"
    answer = raw.parse()
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == left - 6
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES, max_tokens=10)
    assert caught.value.response.json()["error"]["type"] == "tokens"


def test_streams_are_reconciled_through_usage_the_client_did_not_ask_for(
    limited: Gateway,
) -> None:
    sdk = client(limited, "stream")
    for _ in range(6):
        chunks = list(
            sdk.chat.completions.create(
                model=STUB_MODEL, messages=MESSAGES, max_tokens=300, stream=True,
                extra_body={"stub": {"tokens": 4}},
            )
        )  # fmt: skip
        assert all(chunk.usage is None for chunk in chunks)  # the injected usage was stripped
        assert all(chunk.choices for chunk in chunks)
    # Six streams reserved 300+ tokens each; refunded to their usage, they left room.
    chunks = list(
        sdk.chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, max_tokens=300, stream=True,
            stream_options={"include_usage": True}, extra_body={"stub": {"tokens": 4}},
        )
    )  # fmt: skip
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert not chunks[-1].choices


def test_concurrency_slot_comes_back_after_a_client_disconnect(
    limited: Gateway, stub: Stub
) -> None:
    sdk = client(limited, "conc")
    stream = sdk.chat.completions.create(
        model=STUB_MODEL, messages=MESSAGES, stream=True,
        extra_body={"stub": {"tokens": 1000, "itl_ms": 20}},
    )  # fmt: skip
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    assert caught.value.response.json()["error"]["type"] == "concurrency"
    stream.close()  # the client hangs up mid-stream
    assert _eventually_admitted(sdk)
    # A non-streaming request whose client gives up frees its slot too.
    slow = threading.Thread(target=_abandon_slow_request, args=(limited,))
    slow.start()
    slow.join()
    assert _eventually_admitted(sdk)


def test_a_stream_longer_than_its_lease_keeps_its_slot(
    stub: Stub, redis_url: str, tmp_path: Path
) -> None:
    """Leases are renewed while a request runs: with 1 s leases, a 3 s stream still
    holds the key's only slot after 2 s, and frees it when it ends."""
    name, key = f"lease-{RUN}", "sk-lease-0123456789"
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {"enabled": True, "keys": [{"name": name, "key": key, "max_concurrent": 1}]},
        "ratelimit": {"concurrency_lease_s": 1},
    }
    for gateway in start_gateway(config, tmp_path):
        sdk = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        stream = sdk.chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, stream=True,
            extra_body={"stub": {"tokens": 150, "itl_ms": 20}},
        )  # fmt: skip
        chunks = iter(stream)
        next(chunks)
        time.sleep(2.0)  # two leases: without renewal the slot would be gone
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
        assert caught.value.response.json()["error"]["type"] == "concurrency"
        assert sum(1 for _ in chunks) > 10  # the stream runs to its end
        assert _eventually_admitted(sdk)


GREEDY = {name: (f"{name}-{RUN}", f"sk-{name}-0123456789") for name in ("spent", "fresh", "flow")}


@pytest.fixture(scope="module")
def greedy(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of a stub that generates as many tokens as it is allowed
    (100,000 unless told fewer), with three keys of 2000 tokens per minute."""
    directory = tmp_path_factory.mktemp("greedy")
    for engine in start_stub("--model", STUB_MODEL, "--tokens", "100000"):
        keys = [{"name": name, "key": key, "tpm": 2000} for name, key in GREEDY.values()]
        config = {
            "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
            "redis": {"url": redis_url},
            "auth": {"enabled": True, "keys": keys},
        }
        yield from start_gateway(config, directory)


def greedy_client(gateway: Gateway, kind: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=GREEDY[kind][1], max_retries=0)


def test_a_token_limit_caps_what_the_engine_generates(greedy: Gateway) -> None:
    """Ten requests without max_tokens on a 2000-token key, to an engine that writes
    100,000 tokens unless told otherwise: together they are served at most 2000 tokens
    (prompt + completion, as reported in usage) within the minute.

    Margin: a request's real prompt may exceed the gateway's estimate (4 characters a
    token), by as much the served total may exceed the limit. Here there is none: the
    estimate for "hello" (6 tokens) is above the stub's count (5)."""
    sdk = greedy_client(greedy, "spent")
    served, finishes, refusals = 0, [], []
    for _ in range(10):
        try:
            answer = sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
        except openai.RateLimitError as refused:
            refusals.append(refused.response.json()["error"]["type"])
            continue
        assert answer.usage is not None
        served += answer.usage.total_tokens
        finishes.append(answer.choices[0].finish_reason)
    assert 2000 - 10 <= served <= 2000, served
    assert finishes == ["length"] * 4  # three of 512 (the default), one of what was left
    assert refusals == ["tokens"] * 6
    # Eight prompts of 300 tokens each on the spent key: refused, with when to retry.
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.completions.create(model=STUB_MODEL, prompt=["hello"] * 8, max_tokens=300)
    assert caught.value.response.json()["error"]["type"] == "tokens"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 61


def test_every_prompt_of_a_list_is_reserved(greedy: Gateway) -> None:
    """On a fresh key, eight prompts asking for 300 tokens each cannot all have 300:
    each gets an eighth of what the prompts leave, as the max_tokens the engine sees."""
    sdk = greedy_client(greedy, "fresh")
    raw = sdk.completions.with_raw_response.create(
        model=STUB_MODEL, prompt=["hello"] * 8, max_tokens=300
    )
    prompt = (8 * len("hello") + 3) // 4
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(
        2000 - prompt - 8 * ((2000 - prompt) // 8)
    )
    assert raw.parse().choices[0].finish_reason == "length"


def test_streams_are_capped_too(greedy: Gateway) -> None:
    sdk = greedy_client(greedy, "flow")
    chunks = list(
        sdk.chat.completions.create(
            model=STUB_MODEL, messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 512  # the default max_tokens


def test_per_model_limit_applies_on_top_of_the_key_limit(limited: Gateway) -> None:
    sdk = client(limited, "model")
    for _ in range(2):
        sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"


def test_rate_limits_are_counted_by_key_name_in_metrics(limited: Gateway) -> None:
    text = limited.metrics()
    name = KEYS["rpm"][0]
    assert f'vgate_rate_limited_requests_total{{key="{name}",kind="requests"}} 1.0' in text
    assert f'vgate_tokens_charged_total{{key="{KEYS["tpm"][0]}"}}' in text
    assert KEYS["rpm"][1] not in text  # never the secret


def test_keys_without_limits_get_no_ratelimit_headers(stub: Stub, gateway: Gateway) -> None:
    raw = gateway.client().chat.completions.with_raw_response.create(
        model=STUB_MODEL, messages=MESSAGES
    )
    assert not any(h.startswith("x-ratelimit") for h in raw.headers)


def _abandon_slow_request(gateway: Gateway) -> None:
    body = {"model": STUB_MODEL, "messages": MESSAGES, "stub": {"ttft_ms": 5000}}
    headers = {"Authorization": f"Bearer {KEYS['conc'][1]}"}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gateway.base_url}/chat/completions", json=body, headers=headers, timeout=0.5)


def _eventually_admitted(sdk: openai.OpenAI, within_s: float = 2.0) -> bool:
    deadline = time.monotonic() + within_s
    while True:
        try:
            sdk.chat.completions.create(model=STUB_MODEL, messages=MESSAGES)
            return True
        except openai.RateLimitError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
