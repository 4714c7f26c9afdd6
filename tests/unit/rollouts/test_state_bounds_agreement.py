"""What a shadowed primary stream holds while it lasts: its text, never its events.

The collector used to keep every batch of the stream until its end; a long greedy
stream with ``top_logprobs`` (kilobytes per token) held all of it, by every primary
whose copy was drawn, however many were streaming at once.
"""

from __future__ import annotations

import tracemalloc

import orjson

from gateway.observability.metrics import GatewayMetrics
from gateway.rollouts.agreement import MAX_COMPARED_CHARS, AgreementPair, StreamCollector

_LOGPROBS = {
    "content": [
        {
            "token": "x",
            "logprob": -0.1,
            "top_logprobs": [{"token": f"t{i}", "logprob": -1.5} for i in range(20)],
        }
    ]
}


def _event(text: str) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "logprobs": _LOGPROBS}]}
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_a_long_stream_leaves_only_its_text_held() -> None:
    event = _event("x")
    events = 10_000  # about 8 MB of events, 10,000 characters of text
    tracemalloc.start()
    try:
        collector = StreamCollector()
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(events):
            collector.inspect(bytes(bytearray(event)))  # a fresh batch, as each read gives
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(event) * events > 5_000_000
    assert held - before < 1_000_000
    collector.inspect(b"data: [DONE]\n\n")
    assert collector.text() == "x" * events


def test_past_the_compared_length_nothing_is_kept_nor_compared() -> None:
    collector = StreamCollector()
    piece = "y" * 4096
    for _ in range(MAX_COMPARED_CHARS // len(piece) + 1):
        collector.inspect(_event(piece))
    assert collector.text() is None
    collector.inspect(_event("more"))
    collector.inspect(b"data: [DONE]\n\n")
    assert collector.text() is None


def test_once_the_shadow_failed_the_primary_is_no_longer_read() -> None:
    pair = AgreementPair("r", GatewayMetrics())
    collector = StreamCollector(pair)
    collector.inspect(_event("kept while the shadow may answer"))
    pair.shadow(None)  # the copy failed: nothing will be compared
    collector.inspect(_event("not read"))
    assert collector.text() is None


def test_a_pair_still_compares_the_text_read_as_it_passed() -> None:
    metrics = GatewayMetrics()
    pair = AgreementPair("r", metrics)
    collector = StreamCollector(pair)
    collector.inspect(_event("hello") + _event(" world") + b"data: [DONE]\n\n")
    collector.inspect(_event(" after the end"))
    pair.shadow("hello world")
    pair.primary(collector.text())
    labels = {"rollout": "r", "outcome": "same"}
    assert metrics.registry.get_sample_value("vgate_shadow_agreement_total", labels) == 1
