"""A chat content part is priced by its ``type``, as vLLM reads it: the text of a
``text``/``input_text``/``output_text`` part (its ``text``), a ``refusal`` part (its
``refusal``) and a ``thinking`` part (its ``thinking``) at the text's rate; any other
part (an image, audio, video or file) at the media estimate, whatever ``text`` it
carries (vLLM does not render an image part's ``text``)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.ratelimit.cost import MEDIA_PART_TOKENS, priced_text_chars, request_cost
from gateway.responses.conversation import conversation, read_create
from gateway.responses.pricing import cost_body

TEXT = "A sentence of ordinary text. " * 4000  # 116,000 characters: ~29,000 tokens
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


def prompt_of(parts: list[dict[str, Any]], role: str = "assistant") -> int:
    return request_cost({"messages": [{"role": role, "content": parts}]}, 16).prompt


@pytest.mark.parametrize(
    "part",
    [
        {"type": "text", "text": TEXT},
        {"type": "refusal", "refusal": TEXT},
        {"type": "thinking", "thinking": TEXT},
        {"text": TEXT},
    ],
    ids=["text", "refusal", "thinking", "no type"],
)
def test_a_text_part_is_priced_as_text_whatever_field_holds_it(part: dict[str, Any]) -> None:
    assert prompt_of([part]) >= len(TEXT) // 4
    assert priced_text_chars({"messages": [{"role": "assistant", "content": [part]}]}) == len(
        TEXT
    )  # server.max_prompt_chars counts it


def test_an_image_part_with_a_text_field_is_still_an_image() -> None:
    plain = prompt_of([IMAGE], role="user")
    assert plain >= MEDIA_PART_TOKENS
    assert prompt_of([IMAGE | {"text": ""}], role="user") >= MEDIA_PART_TOKENS
    hundred = [IMAGE | {"text": ""} for _ in range(100)]
    assert prompt_of(hundred, role="user") >= 100 * MEDIA_PART_TOKENS


def test_a_part_whose_type_is_not_a_string_counts_as_media_and_never_raises() -> None:
    assert prompt_of([{"type": ["text"], "text": "hi"}]) >= MEDIA_PART_TOKENS


def responses_prompt(items: list[dict[str, Any]]) -> int:
    request = read_create({"model": "m", "input": items})
    return request_cost(cost_body(request, conversation(None, request)[0]), 16).prompt


def test_responses_parts_are_priced_by_their_type_too() -> None:
    image = {"type": "input_image", "image_url": "https://example.com/cat.png", "text": ""}
    assert responses_prompt([{"role": "user", "content": [image]}]) >= MEDIA_PART_TOKENS
    refusal = {"type": "refusal", "refusal": TEXT}
    said = {"type": "message", "role": "assistant", "content": [refusal]}
    assert responses_prompt([said]) >= len(TEXT) // 4
    summary = {"type": "summary_text", "text": TEXT}
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [summary]}
    assert responses_prompt([reasoning]) >= len(TEXT) // 4
