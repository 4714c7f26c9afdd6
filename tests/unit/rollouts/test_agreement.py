"""Agreement of shadow and primary answers: which requests compare, the texts, the score."""

from __future__ import annotations

import orjson

from gateway.observability.metrics import GatewayMetrics
from gateway.rollouts.agreement import (
    AgreementPair,
    StreamCollector,
    answer_text,
    is_deterministic,
    token_overlap,
)


def test_only_greedy_single_choice_requests_compare() -> None:
    assert is_deterministic({"temperature": 0})
    assert is_deterministic({"temperature": 0.0, "n": 1})
    assert not is_deterministic({})
    assert not is_deterministic({"temperature": 0.5})
    assert not is_deterministic({"temperature": False})
    assert not is_deterministic({"temperature": "0"})
    assert not is_deterministic({"temperature": 0, "n": 2})


def test_answer_texts_of_chat_and_completions() -> None:
    chat = {"choices": [{"message": {"content": "hello there"}}]}
    text = {"choices": [{"text": "plain"}]}
    assert answer_text(orjson.dumps(chat)) == "hello there"
    assert answer_text(orjson.dumps(text)) == "plain"
    assert answer_text(b"not json") is None
    assert answer_text(orjson.dumps({"data": [{"embedding": [0.1]}]})) is None
    assert answer_text(orjson.dumps({"choices": [{"message": {"content": None}}]})) is None


def test_stream_texts_join_the_first_choices_deltas() -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "hello"}}]},
        {"choices": [{"index": 1, "delta": {"content": "other"}}]},
        {"choices": [{"index": 0, "delta": {"content": " world"}}]},
        {"choices": [], "usage": {"total_tokens": 3}},
    ]
    collector = StreamCollector()
    for event in events:
        collector.inspect(b"data: " + orjson.dumps(event) + b"\n\n")
    collector.inspect(b"data: [DONE]\n\n")
    assert collector.text() == "hello world"
    broken = StreamCollector()
    broken.inspect(b'data: {"error": {"message": "x"}}\n\n')
    assert broken.text() is None


def test_token_overlap_is_an_f1_of_word_counts() -> None:
    assert token_overlap("a b c", "a b c") == 1.0
    assert token_overlap("", "") == 1.0
    assert token_overlap("a b", "c d") == 0.0
    assert token_overlap("a b c d", "a b") == 2 * 2 / 6
    assert token_overlap("a a b", "a b b") == 2 * 2 / 6


def test_a_pair_records_once_both_texts_are_in_whatever_the_order() -> None:
    metrics = GatewayMetrics()

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    first = AgreementPair("r", metrics)
    first.shadow("same words")
    assert sample("vgate_shadow_agreement_total", rollout="r", outcome="same") == 0
    first.primary("same words")
    second = AgreementPair("r", metrics)
    second.primary("one two")
    second.shadow("one three")
    failed = AgreementPair("r", metrics)
    failed.primary(None)
    failed.shadow("anything")
    assert sample("vgate_shadow_agreement_total", rollout="r", outcome="same") == 1
    assert sample("vgate_shadow_agreement_total", rollout="r", outcome="differ") == 1
    assert sample("vgate_shadow_token_overlap_sum", rollout="r") == 1.5
