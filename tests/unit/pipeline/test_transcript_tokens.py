"""What a transcription is charged (a token per 4 characters of its transcript), from
each form vLLM answers in: JSON (``json``, ``verbose_json``: only ``text`` counts, not
its segments), plain text / subtitles (the whole answer), and a stream (its deltas)."""

from __future__ import annotations

import orjson
import pytest

from gateway.pipeline.passthrough import transcript_tokens


def _event(content: str) -> bytes:
    chunk = {"object": "transcription.chunk", "choices": [{"delta": {"content": content}}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        (orjson.dumps({"text": "x" * 40, "usage": {"type": "duration", "seconds": 3}}), 10),
        (orjson.dumps({"text": "x" * 41, "segments": [{"tokens": list(range(500))}]}), 11),
        (b"y" * 20, 5),  # response_format text, srt, vtt: the whole answer
        (_event("a" * 8) + _event("b" * 9) + b"data: [DONE]\n\n", 5),
        (b"", 1),  # never nothing
        (b'{"not": "a transcript"}', 6),  # no text: the whole answer
    ],
    ids=["json", "verbose_json", "text", "stream", "empty", "no-text"],
)
def test_a_transcript_is_charged_by_its_text(body: bytes, tokens: int) -> None:
    assert transcript_tokens(body) == tokens
