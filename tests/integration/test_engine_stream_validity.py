"""Streams an engine frames legally but awkwardly, or fills with bytes that are not
UTF-8, through a real gateway (both upstream clients) to the official OpenAI SDK:

- events whose lines end in lone CR, with a CRLF split between two reads (the first
  ends on its CR, the next begins with its LF) and a read ending on the CR of a
  blank line: the SDK reads every event whole. Before, a stream whose first line
  ended in CR read such a split CRLF as two line ends (an event cut in two: its
  first ``data:`` line, alone, is not JSON), and a stream that began with LF held a
  read's last CR back, so a ``data: [DONE]\\r\\r`` read last was never seen;
- an event that is not valid UTF-8: the stream ends with the gateway's error event
  (the events before it arrive), and the answer is not cached. Before, the bytes
  went to the SDK as they came (it fails decoding them) and the stream was cached,
  so every later identical request got the broken bytes again.

The engine writes each piece of a stream with a pause after it, so that each is its
own read at the gateway: a pause that merges two reads makes the test weaker, never
wrong.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.hostile_engine import SSE_HEAD, ScriptedEngine
from tests.integration.conftest import Gateway, start_gateway

PACE_S = 0.05
"""The engine's pause after each piece it writes (one read each at the gateway)."""
RUN = uuid.uuid4().hex[:8]


def chunk_json(text: str, finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-valid", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": {"content": text},
                                       "finish_reason": finish}]}  # fmt: skip
    return json.dumps(body).encode()


HELLO, THERE, STOP = chunk_json("hello "), chunk_json("there"), chunk_json("", "stop")
FIRST_LINE, SECOND_LINE = THERE.split(b' "object"')
"""THERE as two ``data:`` lines (SSE joins them with LF: the same JSON)."""
BROKEN = chunk_json("caf#").replace(b"#", b"\xc3(")
"""A chunk whose content holds a byte that starts a two-byte character, alone."""

PIECES: dict[str, list[bytes]] = {
    "cr_split": [
        b"data: " + HELLO + b"\r\r",  # the first line ends in a lone CR
        b"data: " + FIRST_LINE + b"\r",  # a CRLF split: CR ends this read ...
        b'\ndata: "object"' + SECOND_LINE + b"\r\n\r",  # ... LF begins the next
        b"\ndata: " + STOP + b"\r",
        b"\rdata: [DONE]\r",
        b"\r",
    ],
    "lf_then_cr_done": [
        b"data: " + HELLO + b"\n\n",
        b"data: " + THERE + b"\r\n\r\ndata: " + STOP + b"\r\n\r\n",
        b"data: [DONE]\r\r",  # the last read ends on the CR of the blank line
    ],
    "bad_utf8": [
        b"data: " + HELLO + b"\n\ndata: " + BROKEN + b"\n\n",  # one read: good, then bad
        b"data: " + STOP + b"\n\ndata: [DONE]\n\n",
    ],
}


class PiecewiseEngine(ScriptedEngine):
    """Answers each chat request with :data:`PIECES` of its mode, one HTTP chunk each."""

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        writer.write(SSE_HEAD)
        for piece in PIECES[mode]:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(PACE_S)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


@pytest.fixture(scope="module")
def engine() -> Iterator[PiecewiseEngine]:
    with PiecewiseEngine() as running:
        yield running


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest,
    engine: PiecewiseEngine,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [{"name": "piecewise", "endpoints": [engine.url], "upstream_model": "m"}],
        "upstream": {"client": request.param, "read_timeout_s": 5, "breaker_failures": 1000},
        "redis": {"url": redis_url},
        "cache": {"enabled": True, "namespace": f"{RUN}-{request.param}"},
    }
    directory: Path = tmp_path_factory.mktemp(f"validity-{request.param}")
    yield from start_gateway(config, directory)


def ask(mode: str, tag: str = "") -> dict[str, Any]:
    return {"model": "piecewise", "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": f"MODE:{mode} {RUN} {tag}"}]}  # fmt: skip


@pytest.mark.parametrize("mode", ["cr_split", "lf_then_cr_done"])
def test_events_split_at_their_line_ends_arrive_whole(gateway: Gateway, mode: str) -> None:
    chunks = list(gateway.client().chat.completions.create(**ask(mode)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there"
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "stop"]


def test_an_event_not_in_utf8_ends_the_stream_with_an_error(gateway: Gateway) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in gateway.client().chat.completions.create(**ask("bad_utf8", "sdk")):
            received.append(chunk.choices[0].delta.content or "")
    assert received == ["hello "]  # the event before it, in the same read, arrived
    assert "not valid UTF-8" in str(caught.value)


def test_a_stream_with_an_event_not_in_utf8_is_not_cached(
    gateway: Gateway, engine: PiecewiseEngine
) -> None:
    before = engine.requests.count("bad_utf8")
    bodies, cache_status = [], []
    for _ in range(2):
        answer = httpx.post(f"{gateway.base_url}/chat/completions", json=ask("bad_utf8", "raw"))
        bodies.append(answer.content)
        cache_status.append(answer.headers.get("x-cache"))
    assert engine.requests.count("bad_utf8") == before + 2  # the second went to the engine
    assert cache_status == ["MISS", "MISS"]
    for body in bodies:
        assert b"\xc3(" not in body
        body.decode()  # what the client gets is UTF-8
        assert b"not valid UTF-8" in body and body.endswith(b"data: [DONE]\n\n")
