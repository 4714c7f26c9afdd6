"""The stub engine's response bytes: answers, SSE events and metrics text."""

from __future__ import annotations

import orjson

from engines.stub.output import WORDS, StreamEvents, metrics_text, response_body, token_texts
from engines.stub.plan import Plan


def make_plan(**fields: object) -> Plan:
    values: dict[str, object] = {
        "chat": True,
        "model": "stub-model",
        "stream": True,
        "include_usage": True,
        "n": 1,
        "completion_tokens": 3,
        "finish_reason": "stop",
        "seed": 5,
        "prompt_tokens": 4,
        "ttft_s": 0.0,
        "itl_s": 0.0,
        "fault": None,
    }
    values.update(fields)
    return Plan(**values)  # type: ignore[arg-type]


def test_token_texts_walk_the_word_list_from_the_seed() -> None:
    assert token_texts(len(WORDS) + 1, 3) == [WORDS[1], " " + WORDS[2], " " + WORDS[3]]
    assert token_texts(1, 3, choice=1) != token_texts(1, 3, choice=0)


def test_fast_token_event_equals_the_generic_shape() -> None:
    plan = make_plan(model='odd "100%" model')
    events = StreamEvents(plan, "chatcmpl-1", 42)
    parsed = orjson.loads(events.token(0, ' "quoted" %d').removeprefix(b"data: "))
    assert parsed == {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 42,
        "model": 'odd "100%" model',
        "choices": [
            {
                "index": 0,
                "delta": {"content": ' "quoted" %d'},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


def test_completion_stream_events_carry_text() -> None:
    events = StreamEvents(make_plan(chat=False, finish_reason="length"), "cmpl-1", 1)
    token = orjson.loads(events.token(1, " word").removeprefix(b"data: "))
    finish = orjson.loads(events.finish(0).removeprefix(b"data: "))
    assert token["object"] == "text_completion"
    assert token["choices"][0]["text"] == " word"
    assert token["choices"][0]["index"] == 1
    assert (finish["choices"][0]["text"], finish["choices"][0]["finish_reason"]) == ("", "length")


def test_usage_event_has_no_choices_and_counts_all_choices() -> None:
    events = StreamEvents(make_plan(n=2), "chatcmpl-1", 1)
    usage = orjson.loads(events.usage().removeprefix(b"data: "))
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}


def test_whole_answer_joins_the_stream_tokens() -> None:
    plan = make_plan(stream=False)
    body = orjson.loads(response_body(plan, "chatcmpl-9", 7))
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "".join(token_texts(5, 3)),
    }
    assert body["object"] == "chat.completion"


def test_metrics_text_reports_running_per_model() -> None:
    text = metrics_text({"a": 2}, ["a", "b"]).decode()
    assert 'vllm:num_requests_running{model_name="a"} 2.0' in text
    assert 'vllm:num_requests_running{model_name="b"} 0.0' in text
    assert 'vllm:kv_cache_usage_perc{model_name="a"} 0.0' in text
    assert "# TYPE vllm:num_requests_waiting gauge" in text
