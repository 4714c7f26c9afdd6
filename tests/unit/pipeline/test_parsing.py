"""Reading request bodies as a hostile client writes them: nesting, odd content parts,
token-id prompts. Every case is a 400 or a usable request, never an exception."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.errors import InvalidRequestError
from gateway.pipeline.parsing import MAX_DEPTH, affinity_key, decode_json_object, validate
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest


def nested(depth: int) -> bytes:
    """A body ``depth`` levels deep, counting the body itself."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return b'{"model":"m","x":' + inner + b"}"


@pytest.mark.parametrize("depth", [2, 100, MAX_DEPTH])
def test_nesting_up_to_the_limit_is_read(depth: int) -> None:
    assert decode_json_object(nested(depth))["model"] == "m"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 300, 1000, 1024])
def test_deeper_nesting_is_400(depth: int) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        decode_json_object(nested(depth))
    assert f"more than {MAX_DEPTH} levels" in refused.value.message


def test_nesting_beyond_the_json_reader_is_400() -> None:
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        decode_json_object(nested(5000))


def test_many_brackets_inside_strings_are_not_nesting() -> None:
    text = "[" * 5000 + "{" * 5000
    assert decode_json_object(orjson.dumps({"model": "m", "prompt": text}))["prompt"] == text


def test_many_shallow_containers_are_not_nesting() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}] * 2000
    assert len(decode_json_object(orjson.dumps({"messages": messages}))["messages"]) == 2000


@pytest.mark.parametrize(
    "raw", [b"", b"[]", b"5", b'"s"', b"null", b"\xef\xbb\xbf{}", b"{\xff}", b'{"a": NaN}']
)
def test_anything_but_a_json_object_is_400(raw: bytes) -> None:
    with pytest.raises(InvalidRequestError):
        decode_json_object(raw)


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "text", "text": 5}],
        [{"type": "text", "text": None}, {"type": "text", "text": "ok"}],
        [{"type": "text", "text": ["a", "b"]}],
        [{"type": "text", "text": {"nested": "object"}}],
        [{"type": "image_url", "image_url": {"url": "data:,"}}],
        [],
        None,
    ],
)
def test_the_affinity_key_skips_content_parts_of_the_wrong_kind(content: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    validate(ChatCompletionRequest, body)
    assert affinity_key(body, None, 64).startswith(b"p:")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"messages": "x"},
        {"messages": [5]},
        {"messages": [{"content": 5}]},
        {"prompt": 5},
        {"prompt": [None]},
        {"prompt": [{"a": 1}]},
        {"prompt": [[1, "x", None]]},
        {"user": 5, "prompt": "x"},
    ],
)
def test_the_affinity_key_is_total_over_any_object(body: dict[str, Any]) -> None:
    assert isinstance(affinity_key(body, None, 64), bytes)


def test_text_parts_are_joined_up_to_the_budget() -> None:
    parts = [{"type": "text", "text": "abc"}, {"type": "text", "text": "def"}]
    body = {"messages": [{"role": "system", "content": parts}]}
    assert affinity_key(body, None, 4) == b"p:abcd"


def test_token_prompts_are_keyed_by_their_leading_tokens() -> None:
    """Prompts that share only their first token (BOS) get different keys; prompts
    that share the whole budget (``prefix_chars // 4`` tokens) get the same one."""
    bos = 1
    one = {"prompt": [bos, 10, 11, 12, 13]}
    other = {"prompt": [bos, 20, 21, 22, 23]}
    assert affinity_key(one, None, 16) != affinity_key(other, None, 16)
    same_start = {"prompt": [bos, 10, 11, 12, 99]}
    assert affinity_key(one, None, 16) == affinity_key(same_start, None, 16)  # 4 tokens
    batch = {"prompt": [[bos, 10, 11, 12], [bos, 7]]}
    assert affinity_key(batch, None, 16) == affinity_key(one, None, 16)
    validate(CompletionRequest, {"model": "m", **batch})


def test_session_and_user_come_first_and_any_header_byte_is_fine() -> None:
    odd = bytes(range(0x20, 0x100)).decode("latin-1")  # how header values arrive
    assert affinity_key({"prompt": "x"}, odd, 8) == b"s:" + odd.encode()
    assert affinity_key({"prompt": "x", "user": "\ud7ff\U0010ffff"}, None, 8).startswith(b"u:")


@pytest.mark.parametrize("encoding", ["bytes", "bytes_only", "FLOAT", 1])
def test_an_embedding_encoding_the_gateway_cannot_relay_is_400(encoding: Any) -> None:
    """vLLM's binary forms answer raw bytes described in a ``metadata`` header: through
    the gateway they came labelled JSON and without it (fidelity hunt)."""
    body = {"model": "m", "input": "hi", "encoding_format": encoding}
    with pytest.raises(InvalidRequestError) as refused:
        validate(EmbeddingRequest, body)
    assert refused.value.param == "encoding_format"
    for kept in ("float", "base64", None):
        assert validate(EmbeddingRequest, body | {"encoding_format": kept}).input == "hi"
