"""A hostile client against one real gateway: random and malformed bodies and headers on
both completion routes, streamed and not, with auth, rate limits, the response cache
and prefix affinity on, Redis, and two stub engines behind it.

Every answer must be one a client can use: no 5xx but 503 (an engine or a store out
of reach is the only failure of the server's own a client may see), every error body
OpenAI's JSON error object, every 200 a complete answer (a stream ends with
``[DONE]``), nothing running past its timeout; and afterwards the gateway is healthy,
with nothing left in flight.

Seeded: the seed is printed (pytest shows it with a failure) and named in the
assertion; ``FUZZ_SEED=<n>`` replays a run, ``FUZZ_CASES=<n>`` changes its length
(default 2,000). Cases are generated up front from the seed, then sent over a
bounded number of connections at once.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.helpers.processes import free_port
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
CASES = int(os.environ.get("FUZZ_CASES") or 2000)
CONNECTIONS = 16
CASE_TIMEOUT_S = 20.0
RUN = uuid.uuid4().hex[:8]
KEY = "sk-fuzz-0123456789abcdef"
TIGHT_KEY = "sk-fuzz-tight-0123456789"
ADMIN_KEY = "sk-fuzz-admin-0123456789abcdef"
MAX_BODY = 256 * 1024
ALIAS, DEAD = "alias-model", "dead-model"


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[Stub, Stub]]:
    first = start_stub("--model", STUB_MODEL)
    second = start_stub("--model", STUB_MODEL)
    try:
        yield next(first), next(second)
    finally:
        first.close()
        second.close()


@pytest.fixture(scope="module")
def fuzzed(
    engines: tuple[Stub, Stub], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    urls = [stub.url for stub in engines]
    config = {
        "models": [
            {"name": STUB_MODEL, "endpoints": urls},
            {"name": ALIAS, "endpoints": urls, "upstream_model": STUB_MODEL},
            {"name": DEAD, "endpoints": [f"http://127.0.0.1:{free_port()}"]},
        ],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "admin_key": ADMIN_KEY,
            "keys": [
                {"name": f"fuzz-{RUN}", "key": KEY, "rpm": 1_000_000, "tpm": 1_000_000_000},
                {"name": f"tight-{RUN}", "key": TIGHT_KEY, "rpm": 60, "max_concurrent": 2},
            ],
        },
        "cache": {"enabled": True, "namespace": f"fuzz-{RUN}"},
        "routing": {"policy": "prefix_affinity", "prefix_chars": 16},
        "upstream": {"read_timeout_s": 10, "breaker_failures": 1000},
        "server": {"max_body_bytes": MAX_BODY},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("fuzz"))


# ---------------------------------------------------------------- the hostile client


ODD_NUMBERS: list[Any] = [
    0, -1, 1, 2, 129, -(2**31), 2**31, 2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1,
    1e23, 1e308, -1e308, 5e-324, 0.5, -0.0, 1.0, 2.5,
]  # fmt: skip
ODD_STRINGS: list[str] = [
    "", " ", "\u0000", "\ufeff", "\u202e", "é", "😀", "\ud7ff\U0010ffff", "x" * 5000,
    "null", "[DONE]", "data: {}\n\n", '"model":"stub-model"', "\r\n", "%s%n", "true",
    "stub-model", "{{ system }}", "\\u0000", "<|endoftext|>",
]  # fmt: skip
FIELDS = [
    "model", "messages", "prompt", "stream", "stream_options", "max_tokens",
    "max_completion_tokens", "n", "best_of", "temperature", "top_p", "seed", "stop", "user",
    "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format",
    "echo", "suffix", "presence_penalty", "frequency_penalty", "top_k", "min_p",
    "ignore_eos", "metadata", "request_id", "store", "service_tier", "functions",
    "min_tokens", "stop_token_ids", "x_unknown_field",
]  # fmt: skip
TYPED: dict[str, list[Any]] = {
    "model": [5, None, "", "nope", [STUB_MODEL], {"a": 1}, STUB_MODEL + "\u0000", ALIAS, DEAD],
    "n": [-1, 0, 2, 128, 129, 10**6, True, "2", 1.5, None],
    "best_of": [-1, 0, 1, 3, 129, 2**64 - 1, "1", None],
    "max_tokens": [-5, 0, 1, 3, 2**31, 2**64 - 1, 1e23, "10", True, 8.0, None],
    "max_completion_tokens": [0, 1, 4, 2**63 - 1, "x", None],
    "temperature": [0, 0.0, -1, 2, 2.0001, 1e308, "0", None, True],
    "top_p": [0, 1, 1.5, -0.1, None],
    "seed": [0, -1, 2**63 - 1, 2**63, -(2**63), 2**64 - 1, 1.5, "7", True],
    "stream_options": ["yes", [], {}, {"include_usage": "x"}, {"include_usage": True}, None],
    "logit_bias": [{"50256": -100}, {"x": "y"}, [1, 2], {"1": 1e308}, {"": None}, "bias", {}],
    "stop": ["", ["\n"], [5], [None], ["x"] * 100, {"a": 1}, None],
    "user": [5, "", "alice", ["bob"], None, "😀" * 100],
    "logprobs": [True, 5, -1, None],
    "tools": [[], [{"type": "function", "function": {"name": "f"}}], "tools", None],
}


def odd_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value a careless or hostile client might send anywhere."""
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice(ODD_NUMBERS)
    if kind == 3:
        return rng.uniform(-1e6, 1e6)
    if kind == 4:
        return rng.choice(ODD_STRINGS)
    if kind == 5:
        return [odd_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return {f"f_{rng.choice(FIELDS)}": odd_value(rng, depth + 1) for _ in range(3)}
    return {"type": "text", "text": odd_value(rng, depth + 1)}


def odd_content(rng: random.Random) -> Any:
    parts: list[Any] = [
        {"type": "text", "text": odd_value(rng)},
        {"type": "image_url", "image_url": {"url": "data:,"}},
        {"type": "text"},
        {"text": "no type"},
        odd_value(rng),
    ]
    return rng.choice([rng.sample(parts, rng.randrange(1, 4)), odd_value(rng), [], None, 5])


PROMPTS = ["Say hi.", "Tell me a story about a fox.", "1 2 3", "the same system prompt"]


def valid_body(rng: random.Random, chat: bool) -> dict[str, Any]:
    """A request the gateway should answer; drawn from a small pool so that identical
    requests meet (cache hits, shared flights) and prefixes repeat (affinity)."""
    body: dict[str, Any] = {"model": rng.choice([STUB_MODEL, STUB_MODEL, ALIAS])}
    text = rng.choice(PROMPTS)
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
        if rng.random() < 0.3:
            body["messages"].insert(0, {"role": "system", "content": PROMPTS[-1]})
    else:
        body["prompt"] = rng.choice([text, [text, text], [1, 2, 3, rng.randrange(9)], [[1, 2]]])
    if rng.random() < 0.6:
        body["temperature"] = 0
    if rng.random() < 0.7:
        body["max_tokens"] = rng.randrange(1, 12)
    return body


def mutate(rng: random.Random, body: dict[str, Any], chat: bool) -> str:
    """Change ``body`` in one hostile way; returns what was done."""
    choice = rng.randrange(7)
    if choice == 0:
        name = rng.choice(list(TYPED))
        body[name] = rng.choice(TYPED[name])
        return f"{name}={body[name]!r:.60}"
    if choice == 1:
        name = rng.choice(FIELDS)
        body[name] = odd_value(rng)
        return f"{name}=odd"
    if choice == 2:
        name = rng.choice(["model", "messages", "prompt", "max_tokens"])
        body.pop(name, None)
        return f"without {name}"
    if choice == 3 and chat:
        body["messages"] = [{"role": rng.choice(["user", "system", 5, "", None, "ipython"]),
                             "content": odd_content(rng)}]  # fmt: skip
        return "odd message"
    if choice == 3:
        body["prompt"] = rng.choice(
            [[], [[]], [1, "a"], [-1, 2**64 - 1], [[1, 2], [3]], 5, None, {"a": 1}, "", [""]]
        )
        return f"prompt={body['prompt']!r:.40}"
    if choice == 4 and chat:
        body["messages"] = rng.choice(
            [[], "x", [5], [None], [{"role": "user", "content": "x"}] * rng.randrange(1, 6000)]
        )
        return f"messages of {type(body['messages']).__name__}"
    if choice == 5:
        body["stream"] = rng.choice([True, False, None, "yes", 1, [], {}])
        return f"stream={body['stream']!r}"
    body[f"f_{rng.randrange(10**6)}"] = odd_value(rng)
    return "unknown field"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def raw_body(rng: random.Random, chat: bool) -> tuple[bytes, str]:
    """Bytes that are not quite (or not at all) a JSON request."""
    valid = orjson.dumps(valid_body(rng, chat))
    head = valid[:-1]  # without the closing brace: append a field
    choices: list[tuple[bytes, str]] = [
        (b"", "empty"),
        (b"{", "truncated"),
        (valid[: rng.randrange(1, len(valid))], "cut"),
        (b"[]", "array"),
        (b"null", "null"),
        (b'"text"', "string"),
        (b"\xef\xbb\xbf" + valid, "BOM"),
        (valid + b" trailing", "trailing garbage"),
        (head + b',"x":"\xff\xfe"}', "non-UTF-8"),
        (head + b',"x":"\\ud800"}', "lone surrogate"),
        (head + b',"x":"\\udc00\\ud800"}', "reversed surrogates"),
        (head + b',"x":NaN}', "NaN"),
        (head + b',"temperature":Infinity}', "Infinity"),
        (head + b',"x":1e400}', "1e400"),
        (head + b',"x":-1e400}', "-1e400"),
        (head + b',"seed":123456789012345678901234567890}', "huge int"),
        (head + b',"x":1e300,"temperature":0}', "1e300 cached"),
        (head + b',"model":{"a":1}}', "duplicate model"),
        (head + b',"stream":true,"stream":"x"}', "duplicate stream"),
        (head + b',"\\u0000":0}', "NUL key"),
        (b" " * 10_000 + valid, "leading whitespace"),
        (bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), "random bytes"),
        (b'{"model":"' + b"m" * (MAX_BODY + 10) + b'"}', "over the body limit"),
    ]
    depth = rng.choice([64, 254, 255, 300, 1000, 1023, 1024, 1025, 5000])
    choices.append((head + b',"x":' + nested(depth) + b"}", f"nested {depth}"))
    content = b'[{"role":"user","content":[{"type":"text","text":' + nested(300) + b"}]}]"
    choices.append((head + b',"messages":' + content + b"}", "nested text part"))
    return rng.choice(choices)


def odd_header_value(rng: random.Random) -> bytes:
    """Bytes h11 lets through: visible ASCII, Latin-1, inner spaces and tabs."""
    alphabet = [*range(0x21, 0x7F), *range(0x80, 0x100)]
    inner = bytes(rng.choice([*alphabet, 0x20, 0x09]) for _ in range(rng.randrange(40)))
    return bytes([rng.choice(alphabet)]) + inner + bytes([rng.choice(alphabet)])


def headers(rng: random.Random) -> list[tuple[bytes, bytes]]:
    roll = rng.random()
    if roll < 0.72:
        auth: bytes | None = f"Bearer {KEY}".encode()
    elif roll < 0.82:
        auth = f"Bearer {TIGHT_KEY}".encode()
    else:
        auth = rng.choice(
            [None, b"Bearer", KEY.encode(), f"bearer {KEY}".encode(),
             f"Bearer  {KEY}".encode(), f"Bearer sk-{rng.getrandbits(128):032x}".encode(),
             b"Basic dXNlcjpwYXNz", b"Bearer " + odd_header_value(rng), b"Bearer " + b"k" * 4000,
             f"Bearer {ADMIN_KEY}".encode()]
        )  # fmt: skip
    found: list[tuple[bytes, bytes]] = [] if auth is None else [(b"authorization", auth)]
    content_type = rng.choice(
        [b"application/json", b"application/json", b"text/plain", None,
         b"application/json; charset=latin-1", b"multipart/form-data; boundary=x",
         odd_header_value(rng)]
    )  # fmt: skip
    if content_type is not None:
        found.append((b"content-type", content_type))
    optional = {
        b"cache-control": [b"no-cache", b"no-store", b"max-age=0", b"max-age=-1",
                           b"max-age=nan", b"max-age=inf", b"max-age=1e999", b"max-age=",
                           b'max-age="5"', b"no-cache, no-store, max-age=9", b",,,",
                           b"max-age=" + b"9" * 2000, b"private"],
        b"x-session-id": [b"s", b"session-1", b"x" * 2000, b"\xff\xfe"],
        b"x-request-id": [b"trace-1", b"x" * 500, b"\xe9t\xe9", b"req id"],
        b"accept": [b"text/event-stream", b"*/*", b"application/xml"],
    }  # fmt: skip
    for name, values in optional.items():
        if rng.random() < 0.25:
            found.append((name, rng.choice([*values, odd_header_value(rng)])))
    if rng.random() < 0.03:  # repeated headers: the first wins
        found.append((b"authorization", odd_header_value(rng)))
    return found


@dataclass(frozen=True, slots=True)
class Case:
    number: int
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    label: str
    leave_early: bool = False
    chunk_size: int | None = None
    """Send the body chunked (no Content-Length), in pieces of this size."""


def make_case(rng: random.Random, number: int) -> Case:
    chat = rng.random() < 0.5
    path = "/v1/chat/completions" if chat else "/v1/completions"
    roll = rng.random()
    if roll < 0.35:
        body_dict = valid_body(rng, chat)
        label = "valid"
    elif roll < 0.8:
        body_dict = valid_body(rng, chat)
        label = "; ".join(mutate(rng, body_dict, chat) for _ in range(rng.randrange(1, 4)))
    else:
        body_dict = None
    if body_dict is not None:
        if "stream" not in body_dict and rng.random() < 0.5:
            body_dict["stream"] = True
            if rng.random() < 0.5:
                body_dict["stream_options"] = {"include_usage": rng.random() < 0.5}
        body = orjson.dumps(body_dict)
    else:
        body, label = raw_body(rng, chat)
    method = "POST" if rng.random() < 0.99 else rng.choice(["GET", "PUT", "DELETE", "PATCH"])
    leave_early = rng.random() < 0.03
    chunk_size = rng.choice([1, 7, 4096]) if rng.random() < 0.05 else None
    if chunk_size is not None and len(body) > 64 * chunk_size:
        chunk_size = 4096  # httpx takes ~100 µs a piece: 1-byte pieces only for small bodies
    return Case(number, method, path, headers(rng), body, label, leave_early, chunk_size)


def make_cases(seed: int, count: int) -> list[Case]:
    rng = random.Random(seed)
    return [make_case(rng, number) for number in range(count)]


# ---------------------------------------------------------------- what an answer must be


REQUIRED_ERROR_FIELDS = {"message", "type", "param", "code"}


def error_problem(body: bytes) -> str | None:
    """Why ``body`` is not OpenAI's error object, or None when it is."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"error body is not JSON: {body[:200]!r}"
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not set(error) >= REQUIRED_ERROR_FIELDS:
        return f"error body is not OpenAI's: {body[:200]!r}"
    if not isinstance(error["message"], str):
        return "error message is not a string"
    return None


def stream_problem(body: bytes) -> str | None:
    """Why a 200 stream is not a complete, well-formed one, or None."""
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    if not events or events[-1] != b"[DONE]":
        return f"stream does not end with [DONE]: {body[-200:]!r}"
    for event in events[:-1]:
        try:
            data = orjson.loads(event)
        except orjson.JSONDecodeError:
            return f"stream event is not JSON: {event[:200]!r}"
        if isinstance(data, dict) and "error" in data:
            return f"stream ended in an error: {event[:300]!r}"
    return None


def answer_problem(status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with one answer (None: a usable answer)."""
    if status >= 500 and status != 503:
        return f"HTTP {status}: {body[:300]!r}"
    if status >= 400:
        return error_problem(body)
    if status != 200:
        return f"unexpected HTTP {status}"
    if content_type.startswith("text/event-stream"):
        return stream_problem(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"200 body is not JSON: {body[:200]!r}"
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return f"200 body has no choices: {body[:200]!r}"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    status: int
    problem: str | None


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def send(client: httpx.AsyncClient, case: Case) -> Outcome:
    content: bytes | AsyncIterator[bytes] = case.body
    if case.chunk_size is not None:
        content = pieces(case.body, case.chunk_size)
    request = client.build_request(case.method, case.path, headers=case.headers, content=content)
    try:
        async with asyncio.timeout(CASE_TIMEOUT_S):
            response = await client.send(request, stream=True)
            try:
                if case.leave_early and response.status_code == 200:
                    async for _ in response.aiter_raw():
                        break  # a client that hangs up after the first bytes
                    return Outcome(case, response.status_code, None)
                body = await response.aread()
            finally:
                await response.aclose()
    except TimeoutError:
        return Outcome(case, 0, f"no complete answer within {CASE_TIMEOUT_S} s (a hang)")
    except httpx.HTTPError as exc:
        return Outcome(case, 0, f"transport failure: {exc!r}")
    status, content_type = response.status_code, response.headers.get("content-type", "")
    return Outcome(case, status, answer_problem(status, content_type, body))


async def run_cases(gateway: Gateway, cases: list[Case]) -> list[Outcome]:
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    timeout = httpx.Timeout(CASE_TIMEOUT_S)
    async with httpx.AsyncClient(base_url=gateway.url, limits=limits, timeout=timeout) as client:
        gate = asyncio.Semaphore(CONNECTIONS)

        async def one(case: Case) -> Outcome:
            async with gate:
                return await send(client, case)

        return await asyncio.gather(*(one(case) for case in cases))


def until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def in_flight(gateway: Gateway) -> float:
    """Requests in flight, from /metrics (on the operator listener when there is one)."""
    base = getattr(gateway, "admin_url", None) or gateway.url
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line.startswith("vgate_requests_in_flight{")
    )


# ---------------------------------------------------------------- the test


def test_no_request_makes_the_gateway_fail(fuzzed: Gateway) -> None:
    print(f"fuzz seed: {SEED} (replay with FUZZ_SEED={SEED}), {CASES} cases")
    cases = make_cases(SEED, CASES)
    started = time.monotonic()
    outcomes = asyncio.run(run_cases(fuzzed, cases))
    elapsed = time.monotonic() - started
    statuses = Counter(outcome.status for outcome in outcomes)
    print(f"fuzz: {len(outcomes)} cases in {elapsed:.1f} s, statuses {sorted(statuses.items())}")
    failures = [o for o in outcomes if o.problem is not None]
    shown = "\n".join(
        f"  case {o.case.number} {o.case.method} {o.case.path} [{o.case.label}]: {o.problem}"
        for o in failures[:15]
    )
    assert not failures, f"seed {SEED}: {len(failures)} of {len(cases)} cases failed:\n{shown}"
    assert statuses[200] > len(cases) // 10, f"seed {SEED}: too few answered: {statuses}"

    # Healthy afterwards: it answers, a normal request works, nothing is left in flight.
    assert httpx.get(f"{fuzzed.url}/health").status_code == 200
    normal = httpx.post(
        f"{fuzzed.base_url}/chat/completions",
        json={"model": STUB_MODEL, "messages": [{"role": "user", "content": "still there?"}]},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=10,
    )
    assert normal.status_code == 200, normal.text
    assert normal.json()["choices"][0]["message"]["content"]
    assert until(lambda: in_flight(fuzzed) == 0, timeout_s=5), "requests left in flight"


def test_the_same_seed_makes_the_same_cases() -> None:
    assert make_cases(7, 50) == make_cases(7, 50)
    assert make_cases(7, 50) != make_cases(8, 50)
