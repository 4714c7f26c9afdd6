"""Real vLLM (CPU build) serving the embedded default model, through the gateway."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from engines.stats import parse_prometheus
from tests.e2e.conftest import DEFAULT_MODEL, READY_TIMEOUT_S, SPEC_MODEL, Stack

pytestmark = pytest.mark.e2e
PARIS: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


def engine_metrics(*urls: str) -> dict[str, float]:
    """The engines' counters and gauges, summed over ``urls``."""
    totals: dict[str, float] = {}
    for url in urls:
        # A CPU engine busy with a batch answers /metrics slowly: give it time.
        for name, value in parse_prometheus(httpx.get(f"{url}/metrics", timeout=60).text).items():
            totals[name] = totals.get(name, 0.0) + value
    return totals


def settled_metrics(urls: list[str], timeout_s: float = 120.0) -> dict[str, float]:
    """The engine's counters once it is idle and they stop moving.

    vLLM publishes a request's last tokens to ``/metrics`` a moment after its answer
    went out, so a snapshot taken right after an earlier test's request can miss a
    token that then lands inside the next measurement (seen: 1,025 tokens counted
    for a batch of 1,024). Polls until two reads half a second apart agree."""
    deadline = time.monotonic() + timeout_s
    last = engine_metrics(*urls)
    while time.monotonic() < deadline:
        time.sleep(0.5)  # the interval between two reads, not a wait for an outcome
        now = engine_metrics(*urls)
        idle = now.get("vllm:num_requests_running", 0.0) == 0
        steady = all(
            now.get(name) == last.get(name)
            for name in ("vllm:generation_tokens_total", "vllm:iteration_tokens_total_count")
        )
        if idle and steady:
            return now
        last = now
    raise AssertionError(f"the engine's counters did not settle within {timeout_s:g} s")


def test_paris_non_streaming(stack: Stack) -> None:
    reply = stack.client().chat.completions.create(
        model=DEFAULT_MODEL, messages=PARIS, temperature=0, max_tokens=24
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


def test_streaming_chat_with_usage(stack: Stack) -> None:
    stream = stack.client().chat.completions.create(
        model=DEFAULT_MODEL,
        messages=PARIS,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 3


def test_sixteen_concurrent_requests_are_batched(stack: Stack) -> None:
    # Counters, not a sampled gauge: a CPU engine busy with the batch can answer /metrics
    # so slowly that a sampler sees nothing but the idle engine before and after it.
    # Engine steps are counted by the histogram of tokens per step; served one at a
    # time, 16 requests of N tokens need at least 16 * N steps, batched about N (per
    # engine: the model has two replicas, and the counters are summed over both).
    engines = stack.engine_urls(DEFAULT_MODEL)
    before = settled_metrics(engines)
    client = stack.client(timeout=300)
    max_tokens = 64

    def one(i: int) -> str:
        reply = client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=[{"role": "user", "content": f"Count from {i} to {i + 20}."}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return reply.choices[0].message.content or ""

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(16)))
    after = settled_metrics(engines)
    assert len(answers) == 16
    assert all(answers)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    generated = delta("vllm:generation_tokens_total")
    steps = delta("vllm:iteration_tokens_total_count")
    # Every request generated its 64 tokens. vLLM (CPU build, on an AVX2-only machine)
    # counted 1,025 for this batch in two runs out of two, with the engine idle and its
    # counters settled before and after: at most one token per request more is
    # tolerated; a batch that lost or cut requests would count fewer.
    assert 16 * max_tokens <= generated <= 16 * (max_tokens + 1), generated
    # Strictly fewer than half the steps of serial serving: on average more than
    # two requests advanced together in every step.
    assert 0 < steps < generated / 2, f"{steps:.0f} engine steps for {generated:.0f} tokens"


def test_client_disconnect_aborts_the_generation(stack: Stack) -> None:
    engines = stack.engine_urls(DEFAULT_MODEL)
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    before = engine_metrics(*engines).get("vllm:generation_tokens_total", 0.0)
    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", json=body, timeout=120
    ) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert engine_metrics(*engines).get("vllm:num_requests_running", 0) >= 1
    # Judged by tokens, not by the clock: a scrape of a busy CPU engine can itself take
    # seconds. With ignore_eos, a generation that was not aborted makes all 1500 tokens.
    deadline = time.monotonic() + 120
    while (after := engine_metrics(*engines)).get("vllm:num_requests_running", 0) > 0:
        assert time.monotonic() < deadline, "the request is still running 2 minutes later"
        time.sleep(0.05)
    generated = after.get("vllm:generation_tokens_total", 0.0) - before
    assert 0 < generated < 1000, f"vLLM made {generated:.0f} of 1500 tokens: not aborted"


def test_ngram_speculative_decoding_serves_and_accepts_drafts(stack: Stack) -> None:
    engine = stack.engine_url(SPEC_MODEL)
    reply = stack.client().chat.completions.create(
        model=SPEC_MODEL, messages=PARIS, temperature=0, max_tokens=24
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    repetitive = "one two three four five " * 20
    stack.client().completions.create(
        model=SPEC_MODEL, prompt=repetitive, max_tokens=64, temperature=0
    )
    accepted = engine_metrics(engine).get("vllm:spec_decode_num_accepted_tokens_total", 0.0)
    assert accepted > 0


def _pid_listening_on(url: str) -> int:
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in cmdline and port.encode() in cmdline:
            return int(proc.name)
    raise AssertionError(f"no vLLM process for {url}")


def test_kill_9_engines_restart_and_responses_continue_across_it(stack: Stack) -> None:
    """Runs last (recovery takes an engine warm-up). A response made before every engine
    of the model is killed is continued (``previous_response_id``) and retrieved after
    they restarted: the conversation lives in the gateway, not in an engine's memory."""
    client = stack.client(timeout=120)
    first = client.responses.create(
        model=DEFAULT_MODEL, input="What is the capital of France?", max_output_tokens=24,
        temperature=0,
    )  # fmt: skip
    assert "Paris" in first.output_text
    killed = stack.engine_urls(DEFAULT_MODEL)
    assert len(killed) == 2
    for engine in killed:
        os.kill(_pid_listening_on(engine), signal.SIGKILL)
    deadline = time.monotonic() + 900
    while True:
        ready = httpx.get(f"{stack.admin_url}/ready", timeout=READY_TIMEOUT_S)
        engines = ready.json()["engines"][DEFAULT_MODEL]
        restarted = [url for url, ok in engines.items() if ok and url not in killed]
        if len(restarted) == 2:
            break
        assert time.monotonic() < deadline, f"engines were not restarted: {engines}"
        time.sleep(1)
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=PARIS, temperature=0, max_tokens=24
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    follow_up = client.responses.create(
        model=DEFAULT_MODEL, previous_response_id=first.id, max_output_tokens=24,
        input="Repeat the name of that city, one word.", temperature=0,
    )  # fmt: skip
    assert follow_up.previous_response_id == first.id
    assert follow_up.output_text
    # The engine saw the whole conversation: the first turn's input and output too.
    assert first.usage is not None and follow_up.usage is not None
    assert follow_up.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    items = client.responses.input_items.list(follow_up.id, order="asc")
    texts = [str(item) for item in items.data]
    assert len(texts) >= 3 and "capital of France" in texts[0], texts
    assert client.responses.retrieve(first.id).output_text == first.output_text
    with pytest.raises(openai.NotFoundError):
        stack.client().chat.completions.create(model="not-served", messages=PARIS)
