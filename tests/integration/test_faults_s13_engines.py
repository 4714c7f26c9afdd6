"""Engine faults under the mixed load (:mod:`tests.integration.faults_s13_world`):
paused past the read deadline mid-stream, killed mid-stream and started again; bodies
broken half way (a chunk size that is no number, a chunk cut short, bytes that are not
UTF-8, half an event then a proper end, no HTTP at all, a JSON answer shorter than its
length), through both upstream clients: an error, never an answer that looks complete.

Found here: a Responses stream whose engine sent bytes that are not UTF-8 had them
relayed (the SDK raised ``UnicodeDecodeError``; the completion routes already ended such
a stream with an error event), and a non-streamed Responses answer over 64 KiB that was
not JSON was relayed as a 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis
from openai.types.chat import ChatCompletionUserMessageParam

from tests.helpers.hostile_engine import SSE_HEAD, ScriptedEngine
from tests.helpers.metrics_text import metric_sum
from tests.helpers.processes import free_port
from tests.helpers.redis_server import run_redis
from tests.integration.conftest import STUB_MODEL, start_gateway
from tests.integration.faults_s13_world import (
    DEADLINE_S,
    KEY,
    KINDS,
    SLOTS,
    check_outcomes,
    condition,
    config,
    no_tracebacks,
    running_load,
    settled,
    shaped,
    stub_engine,
)


async def test_engine_faults_under_mixed_load_keep_every_promise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_PROCESS_LOG_DIR", str(tmp_path / "logs"))
    engine_port = free_port()
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(run_redis(free_port()))
        engine_stack = stack.enter_context(contextlib.ExitStack())
        engine = engine_stack.enter_context(stub_engine(engine_port, "--itl-ms", "150"))
        cfg = config(redis_url, f"http://127.0.0.1:{engine_port}")
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        async with running_load(gateway) as load:
            # 1. Paused past the read deadline mid-stream, then resumed.
            os.kill(engine.pid, signal.SIGSTOP)
            try:
                await load.answers(len(KINDS))
            finally:
                os.kill(engine.pid, signal.SIGCONT)
            await load.answers(2 * len(KINDS))
            # 2. Killed mid-stream, then started again on its port.
            os.kill(engine.pid, signal.SIGKILL)
            await load.answers(len(KINDS))
            engine_stack.close()
            await asyncio.to_thread(engine_stack.enter_context, stub_engine(engine_port))
            await load.answers(2 * len(KINDS))
        check_outcomes(load.outcomes)
        cut = [o for o in load.outcomes if o.detail.startswith("error event")]
        assert cut, load.outcomes  # some streams were cut part way
        await condition(lambda: settled(gateway), 15.0, "not settled after the faults")
        admin = redis.Redis.from_url(redis_url)
        stack.callback(admin.close)
        await condition(
            lambda: asyncio.to_thread(lambda: admin.zcard(SLOTS) == 0), 5.0, "slots left"
        )
        no_tracebacks(tmp_path)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chat_event(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [choice]}  # fmt: skip
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _responses_events(request: dict[str, Any]) -> bytes:
    response = {"id": request.get("request_id", "resp_x"), "object": "response", "created_at": 1,
                "model": "m", "status": "in_progress", "output": []}  # fmt: skip
    created = {"type": "response.created", "sequence_number": 0, "response": response}
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hel",
             "item_id": "msg_1", "output_index": 0, "content_index": 0, "logprobs": []}  # fmt: skip
    return b"".join(
        b"event: " + e["type"].encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"  # type: ignore[attr-defined]
        for e in (created, delta)
    )


class BreakingEngine(ScriptedEngine):
    """Starts an answer (a stream's first events, or a JSON body's head) and then breaks
    its body as the mode says: ``bad_size`` (a chunk size that is no number),
    ``short_chunk`` (a chunk shorter than its size, then the connection closes),
    ``garbage`` (bytes that are not UTF-8, in a well-formed chunk, then the connection
    closes), ``clean_end`` (half an event, then the body's proper end); a JSON answer
    shorter than its content-length; ``garbage_head``: no HTTP at all."""

    model = STUB_MODEL

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        if mode == "garbage_head":
            writer.write(b"\x16\x03\x01 garbage, no status line\r\n\r\n" + b"\xff" * 100)
            await writer.drain()
            return False
        if not request.get("stream"):
            body = b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": ['
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 400\r\n\r\n" + body)  # fmt: skip
            await writer.drain()
            return False
        writer.write(SSE_HEAD)
        first = _chat_event("hel") if "messages" in request else _responses_events(request)
        writer.write(_chunk(first))
        await writer.drain()
        await asyncio.sleep(0.05)
        if mode == "bad_size":
            writer.write(b"zz\r\nnot a chunk\r\n")
        elif mode == "short_chunk":
            writer.write(b"200\r\n" + first[:20])
        elif mode == "clean_end":  # the body ends properly, the answer does not
            writer.write(_chunk(first[: len(first) // 2]) + b"0\r\n\r\n")
        else:
            writer.write(_chunk(b"\x00\x01 garbage that is no event \xfe\n\n") + _chunk(b"x" * 64))
        await writer.drain()
        return False


@pytest.mark.parametrize("upstream_client", ["lean", "aiohttp"])
@pytest.mark.parametrize(
    "mode", ["bad_size", "short_chunk", "garbage", "clean_end", "garbage_head"]
)
async def test_a_body_broken_half_way_is_an_error_never_a_complete_answer(
    mode: str, upstream_client: str, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(BreakingEngine())
        cfg = config("", engine.url)
        del cfg["redis"], cfg["auth"]
        cfg["upstream"]["client"] = upstream_client
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=DEADLINE_S
        ) as client:
            text: ChatCompletionUserMessageParam = {"role": "user", "content": f"MODE:{mode}"}
            outcomes = []
            for kind in ("chat_stream", "resp_stream", "chat", "resp"):
                began = time.monotonic()
                try:
                    if kind == "chat_stream":
                        stream = await client.chat.completions.create(
                            model=STUB_MODEL, messages=[text], stream=True
                        )
                        chunks = [c async for c in stream]
                        outcomes.append((kind, False, f"ended quietly after {len(chunks)}"))
                    elif kind == "resp_stream":
                        events = await client.responses.create(
                            model=STUB_MODEL, input=f"MODE:{mode}", stream=True
                        )
                        seen = [e.type async for e in events]
                        outcomes.append((kind, False, f"ended quietly after {seen}"))
                    elif kind == "chat":
                        await client.chat.completions.create(model=STUB_MODEL, messages=[text])
                        outcomes.append((kind, False, "answered"))
                    else:
                        await client.responses.create(model=STUB_MODEL, input=f"MODE:{mode}")
                        outcomes.append((kind, False, "answered"))
                except openai.APIStatusError as exc:
                    outcomes.append((kind, shaped(exc) and exc.status_code >= 500, str(exc)))
                except openai.APIConnectionError as exc:
                    outcomes.append((kind, False, f"cut: {exc!r}"))
                except openai.APIError as exc:  # an error event
                    outcomes.append((kind, bool(exc.message), f"event: {exc.message}"))
                assert time.monotonic() - began < DEADLINE_S - 1, kind
        assert all(good for _, good, _ in outcomes), outcomes
        in_flight = metric_sum(await asyncio.to_thread(gateway.metrics), "vgate_requests_in_flight")
        assert in_flight == 0


class LargeGarbageEngine(ScriptedEngine):
    """Answers every request 200 ``application/json`` with 70 KiB that begin and end as
    a JSON object does but are none."""

    model = STUB_MODEL

    async def answer(
        self, mode: str, request: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        body = b'{"id": "' + b"x" * 70_000 + b'" no JSON }'
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        writer.write(head % len(body) + body)
        await writer.drain()
        return True


def test_a_large_responses_answer_that_is_no_json_is_a_502(tmp_path: Path) -> None:
    """Answers over 64 KiB are only checked to begin and end as an object; the Responses
    route parses its answer whole all the same, and relayed one that was not JSON as a
    200 (the SDK failed on it). Now a 502 in OpenAI's shape, as a smaller one is."""
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(LargeGarbageEngine())
        cfg = {"models": [{"name": STUB_MODEL, "endpoints": [engine.url]}]}
        gateway = stack.enter_context(contextlib.contextmanager(start_gateway)(cfg, tmp_path))
        answer = httpx.post(
            f"{gateway.base_url}/responses", json={"model": STUB_MODEL, "input": "hi"}, timeout=10
        )
        assert answer.status_code == 502, answer.content[:200]
        assert answer.json()["error"]["code"] == "bad_gateway"
        in_flight = metric_sum(gateway.metrics(), "vgate_requests_in_flight")
        assert in_flight == 0
