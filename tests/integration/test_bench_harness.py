"""Issue #16's benchmark harness for real: the bare upstream answers the official
``openai`` SDK (chat, a paced stream with its usage chunk, completions, the model
list), and ``wrk`` driven by :mod:`benchmarks.wrk` sends every request a prompt of its
own with the Authorization header."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import orjson
import pytest

from benchmarks.clients import UNIQUE
from benchmarks.loadgen import LoadSpec, chat_body
from benchmarks.wrk import run_wrk
from tests.helpers.processes import free_port, run_process

MODEL = "stub-model"


@pytest.fixture(scope="module")
def bare() -> Iterator[openai.OpenAI]:
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.bare_upstream", "--port", str(port),
            "--model", MODEL]  # fmt: skip
    with run_process(argv, f"http://127.0.0.1:{port}/health", timeout=30):
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)


def test_a_chat_answer_with_usage(bare: openai.OpenAI) -> None:
    answer = bare.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}]
    )
    assert answer.object == "chat.completion" and answer.model == MODEL
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens == 16


def test_a_stream_paced_by_the_stub_field(bare: openai.OpenAI) -> None:
    started = time.perf_counter()
    stream = bare.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], stream=True,
        stream_options={"include_usage": True},
        extra_body={"stub": {"tokens": 4, "ttft_ms": 50, "itl_ms": 20}},
    )  # fmt: skip
    chunks = list(stream)
    elapsed = time.perf_counter() - started
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) == 4
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].choices == []
    assert elapsed >= 0.05 + 3 * 0.02 - 0.005  # the TTFT and the gaps were waited


def test_completions_and_the_model_list(bare: openai.OpenAI) -> None:
    answer = bare.completions.create(model=MODEL, prompt="Say hello.")
    assert answer.object == "text_completion" and answer.choices[0].text
    assert [m.id for m in bare.models.list()] == [MODEL]


def recorder(seen: list[tuple[bytes, str | None]]) -> type[BaseHTTPRequestHandler]:
    """A handler that keeps every request body and Authorization header in ``seen``."""

    class Recorder(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((body, self.headers.get("Authorization")))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: object) -> None:
            return

    return Recorder


def test_wrk_sends_each_request_a_prompt_of_its_own() -> None:
    seen: list[tuple[bytes, str | None]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), recorder(seen))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
        body = chat_body(MODEL, prompt=f"Say hello to request {UNIQUE.decode()}.", temperature=0)
        spec = LoadSpec(url=url, body=body, concurrency=4, duration_s=1.0, warmup_s=0.0,
                        headers={"Authorization": "Bearer sk-bench"})  # fmt: skip
        result = run_wrk(spec)
    finally:
        server.shutdown()
        server.server_close()
    bodies = [b for b, _ in seen]
    assert result.ok > 0 and result.error_count == 0
    assert len(bodies) >= result.ok and len(set(bodies)) == len(bodies)
    assert {len(b) for b in bodies} == {len(body)}  # the value is as wide as the marker
    assert {a for _, a in seen} == {"Bearer sk-bench"}
    prompt = orjson.loads(bodies[0])["messages"][0]["content"]
    assert prompt.startswith("Say hello to request ") and UNIQUE.decode() not in prompt
