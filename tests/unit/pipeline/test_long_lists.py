"""Long lists in a body (token ids, prompts, content parts) are checked in one pass,
never through pydantic's union, which recorded an error per item for every form that
failed: 4 million token ids cost seconds in one C call (holding the GIL, so the event
loop stalled even with the parse in a thread) and gigabytes of error objects."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.errors import InvalidRequestError
from gateway.pipeline.parsing import validate
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

LONG = 200_000


@pytest.mark.parametrize(
    "prompt",
    [[1] * LONG, ["a"] * LONG, [[1, 2]] * LONG, [[7] * LONG]],
    ids=["token-ids", "strings", "token-id-lists", "one-long-token-id-list"],
)
def test_a_long_valid_prompt_is_kept_as_sent(prompt: list[Any]) -> None:
    """The same list object, not a copy made item by item."""
    request = validate(CompletionRequest, {"model": "m", "prompt": prompt})
    assert request.prompt is prompt
    embedding = validate(EmbeddingRequest, {"model": "m", "input": prompt})
    assert embedding.input is prompt


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        (CompletionRequest, {"model": "m", "prompt": [1] * LONG + ["x"]}),
        (CompletionRequest, {"model": "m", "prompt": ["x"] * LONG + [1]}),
        (EmbeddingRequest, {"model": "m", "input": [[1]] * LONG + [1]}),
        (ChatCompletionRequest, {"model": "m", "messages": [{"role": "u", "content": [1] * LONG}]}),
    ],
    ids=["ids-then-text", "texts-then-id", "lists-then-id", "content-of-numbers"],
)
def test_a_long_invalid_list_is_one_error_naming_its_field(schema: Any, body: Any) -> None:
    with pytest.raises(ValidationError) as raw:
        schema.model_validate(body)
    assert raw.value.error_count() == 1  # before: one per item and per form tried
    with pytest.raises(InvalidRequestError) as refused:
        validate(schema, body)
    assert refused.value.param in ("prompt", "input", "messages[0].content")
    assert "must be" in str(refused.value)


def test_long_content_parts_are_kept_as_sent() -> None:
    parts = [{"type": "text", "text": "hi"}] * LONG
    request = validate(
        ChatCompletionRequest, {"model": "m", "messages": [{"role": "u", "content": parts}]}
    )
    assert request.messages[0].content is parts


@pytest.mark.parametrize(
    ("prompt", "kept"),
    [([1.0, 2], [1, 2]), ([True], [1])],
)
def test_a_short_list_still_gets_pydantics_lenient_verdict(prompt: list[Any], kept: Any) -> None:
    """As vLLM's own models read it: an integral float is a token id."""
    assert validate(CompletionRequest, {"model": "m", "prompt": prompt}).prompt == kept


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "must not be empty"), ([[1], []], "must not be empty"), (5, "valid string")],
)
def test_short_wrong_prompts_keep_their_messages(prompt: Any, message: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        validate(CompletionRequest, {"model": "m", "prompt": prompt})
    assert message in str(refused.value)
    assert refused.value.param == "prompt"
