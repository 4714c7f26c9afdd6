"""How the stub engine turns a request body and its config into a plan."""

from __future__ import annotations

from typing import Any

import pytest

from engines.stub.plan import Fault, RequestError, StubConfig, plan_request

CHAT: dict[str, Any] = {"model": "stub-model", "messages": [{"role": "user", "content": "a b c"}]}


def chat(**fields: Any) -> dict[str, Any]:
    return {**CHAT, **fields}


def test_defaults_come_from_config() -> None:
    plan = plan_request(StubConfig(tokens=7, ttft_ms=20, itl_ms=5), CHAT, chat=True)
    assert (plan.completion_tokens, plan.finish_reason, plan.n) == (7, "stop", 1)
    assert (plan.ttft_s, plan.itl_s) == (0.02, 0.005)
    assert (plan.stream, plan.include_usage, plan.fault) == (False, False, None)


def test_prompt_tokens_count_words_plus_four_per_message() -> None:
    body = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one two three"}]},
        ]
    )
    assert plan_request(StubConfig(), body, chat=True).prompt_tokens == 2 + 3 + 2 * 4


@pytest.mark.parametrize(
    ("fields", "count", "reason"),
    [
        ({"max_tokens": 3}, 3, "length"),
        ({"max_tokens": 16}, 16, "length"),
        ({"max_tokens": 100}, 16, "stop"),
        ({"max_completion_tokens": 2, "max_tokens": 9}, 2, "length"),
    ],
)
def test_token_limit(fields: dict[str, Any], count: int, reason: str) -> None:
    plan = plan_request(StubConfig(), chat(**fields), chat=True)
    assert (plan.completion_tokens, plan.finish_reason) == (count, reason)


def test_same_prompt_same_seed_other_prompt_other_seed() -> None:
    first = plan_request(StubConfig(), {"model": "stub-model", "prompt": "x"}, chat=False)
    again = plan_request(StubConfig(), {"model": "stub-model", "prompt": "x"}, chat=False)
    other = plan_request(StubConfig(), {"model": "stub-model", "prompt": "y"}, chat=False)
    assert first.seed == again.seed != other.seed


def test_request_overrides_beat_config() -> None:
    config = StubConfig(tokens=16, itl_ms=100, fail_status=503)
    stub = {"tokens": 3, "itl_ms": 0, "fault": "drop", "after": 1}
    plan = plan_request(config, chat(stream=True, stub=stub), chat=True)
    assert (plan.completion_tokens, plan.itl_s) == (3, 0.0)
    assert plan.fault == Fault("drop", 500, 1)


def test_config_drop_after_applies_to_streams_only() -> None:
    config = StubConfig(drop_after=2)
    assert plan_request(config, chat(stream=True), chat=True).fault == Fault("drop", after=2)
    assert plan_request(config, chat(), chat=True).fault is None


def test_error_fault_wins_over_an_unknown_model() -> None:
    with pytest.raises(RequestError) as caught:
        plan_request(StubConfig(fail_status=502), {"model": "nope"}, chat=True)
    assert (caught.value.status, caught.value.error_type) == (502, "server_error")


def test_unknown_or_missing_model_is_404() -> None:
    for body in ({"messages": CHAT["messages"]}, chat(model="other")):
        with pytest.raises(RequestError) as caught:
            plan_request(StubConfig(), body, chat=True)
        assert (caught.value.status, caught.value.code) == (404, "model_not_found")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[]), "messages"),
        (chat(messages=["text"]), "messages"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(max_tokens=-1), "max_tokens"),
        (chat(n=0), "n"),
        (chat(stream="yes"), "stream"),
        (chat(stub=[1]), "stub"),
        (chat(stub={"fault": "explode"}), "stub.fault"),
        (chat(stub={"fault": "error", "status": 200}), "stub.status"),
        (chat(stub={"ttft_ms": -5}), "stub.ttft_ms"),
        (chat(stub={"tokens": 1.5}), "stub.tokens"),
    ],
)
def test_invalid_fields_are_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as caught:
        plan_request(StubConfig(), body, chat=True)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_unknown_stub_keys_are_ignored() -> None:
    plan = plan_request(StubConfig(), chat(stub={"colour": "blue"}), chat=True)
    assert plan.fault is None


@pytest.mark.parametrize(("prompt", "tokens"), [("one two", 2), ([5, 6, 7], 3), (["a b", "c"], 3)])
def test_completion_prompt_forms(prompt: Any, tokens: int) -> None:
    body = {"model": "stub-model", "prompt": prompt}
    assert plan_request(StubConfig(), body, chat=False).prompt_tokens == tokens


def test_completion_prompt_must_be_text_or_ids() -> None:
    with pytest.raises(RequestError) as caught:
        plan_request(StubConfig(), {"model": "stub-model", "prompt": {"x": 1}}, chat=False)
    assert caught.value.param == "prompt"
